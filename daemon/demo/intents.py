"""The sample tickets' intents: per intent a category, a few customer phrasings, one agent answer style
worded a few ways, follow-ups and internal notes (which never reach training)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Intent:
    name: str
    category: str
    subjects: tuple[str, ...]
    questions: tuple[str, ...]
    answers: tuple[str, ...]  # one answer style, worded a few ways
    follow_ups: tuple[str, ...]
    follow_up_answer: str
    notes: tuple[str, ...]  # internal notes: never public, never trained on


INTENTS: tuple[Intent, ...] = (
    Intent(
        name="refund",
        category="billing",
        subjects=("Refund for order {order}", "Refund request", "Money back for order {order}?"),
        questions=(
            "I returned the {item} from order {order} last week and I'd like my refund please.",
            "Can I get a refund for order {order}? The {item} was not what I expected and I sent it back.",
            "I still haven't received the refund for order {order}. The {item} went back to you on {date}.",
        ),
        answers=(
            "I've issued a full refund of ${amount} for order {order}. It goes back to your original "
            "payment method, and most banks show it within 5-10 business days. You'll also get a "
            "confirmation email shortly. If it hasn't appeared after 10 business days, reply here and "
            "we'll trace it with your bank.",
            "Your refund of ${amount} for order {order} is now processed. It returns to the original "
            "payment method and usually shows up within 5-10 business days, depending on your bank. A "
            "confirmation email is on its way. If nothing arrives after 10 business days, reply here and "
            "we'll trace it with your bank.",
        ),
        follow_ups=(
            "Thanks. Is the shipping cost refunded too?",
            "Does the refund include the shipping fee I paid?",
        ),
        follow_up_answer=(
            "Yes, the original shipping fee is included in the ${amount} refund, because the return was "
            "approved. Return shipping labels we provide are always free, so there is nothing more you "
            "need to pay or do."
        ),
        notes=(
            "Refund approved over the limit by a supervisor. Customer has two earlier chargebacks, do not "
            "mention the chargeback history.",
            "Checked the payment processor: card on file ends {last4}. Flagged account {email} for a "
            "fraud review.",
        ),
    ),
    Intent(
        name="password_reset",
        category="account",
        subjects=("Can't log in", "Password reset not working", "Locked out of my account"),
        questions=(
            "I forgot my password and the reset email never arrives. My account email is {email}.",
            "I can't log in to my account. I tried resetting my password but I never got the link.",
            "The password reset link says it has expired every time I click it. Can you help me get back in?",
        ),
        answers=(
            "I've sent a fresh password reset link to the email on your account. The link is valid for "
            "60 minutes, so please use it soon. If you don't see it within a few minutes, check your spam "
            "or promotions folder. After resetting, sign out on other devices and sign back in with the "
            "new password.",
            "A new password reset link is on its way to the email on your account, and it stays valid "
            "for 60 minutes. If it isn't in your inbox within a few minutes, please check the spam or "
            "promotions folder. Once you've reset it, sign out on other devices and sign back in with the "
            "new password.",
        ),
        follow_ups=(
            "Got it, but now it says my account is locked.",
            "The link worked but the app still says the account is locked.",
        ),
        follow_up_answer=(
            "Accounts lock for 30 minutes after five failed attempts. I've unlocked yours now, so you can "
            "sign in right away with the new password. If the app still shows the lock, close it fully "
            "and open it again."
        ),
        notes=(
            "Login attempts came from two countries in one hour. Possible account takeover, escalate to "
            "security if it happens again.",
            "Verified identity with the last four digits of the card ({last4}) and the billing postcode.",
        ),
    ),
    Intent(
        name="shipping_delay",
        category="shipping",
        subjects=("Where is my order {order}?", "Order {order} late", "Delivery delayed"),
        questions=(
            "My order {order} was supposed to arrive on {date} and it's still not here. Where is it?",
            "The tracking for order {order} hasn't updated in {days} days. Is my package lost?",
            "I ordered a {item} (order {order}) two weeks ago and nothing has arrived yet.",
        ),
        answers=(
            "I checked with {carrier} and your order {order} is delayed at their regional hub; it is now "
            "scheduled to arrive within {days} business days. You can follow it with the tracking link in "
            "your shipping email. If it hasn't arrived by then, reply here and we'll send a replacement "
            "at no cost.",
            "Your order {order} is held up at a {carrier} regional hub, and their new delivery estimate is "
            "within {days} business days. The tracking link in your shipping email will show each update. "
            "If it still hasn't arrived by then, just reply here and we'll ship a replacement at no cost.",
        ),
        follow_ups=(
            "Can I get the shipping fee back since it's late?",
            "It's a gift, is there any way to speed it up?",
        ),
        follow_up_answer=(
            "I'm sorry about the wait. I've refunded the shipping fee for order {order} to your original "
            "payment method; it shows within 5-10 business days. {carrier} can't speed up a package that "
            "is already in transit, but we'll keep an eye on it."
        ),
        notes=(
            "{carrier} confirmed the hub is backed up after the storm, about 300 parcels stuck. Do not "
            "promise a date to customers.",
            "Second delay this month for this customer ({phone}). Offer a discount code if they complain "
            "again.",
        ),
    ),
    Intent(
        name="cancel_subscription",
        category="subscriptions",
        subjects=("Cancel my subscription", "Please cancel", "Stop my {plan} plan"),
        questions=(
            "Please cancel my {plan} subscription. I don't use it anymore.",
            "How do I cancel my {plan} plan? I don't want to be charged next month.",
            "I want to stop my subscription before the next billing date.",
        ),
        answers=(
            "I've cancelled your {plan} subscription, effective at the end of the current billing period "
            "on {date}. You won't be charged again, and you keep full access until that date. A "
            "confirmation email is on its way. If you change your mind, you can restart the plan anytime "
            "from Account settings.",
            "Your {plan} subscription is now cancelled and ends with the current billing period on "
            "{date}. There will be no further charges, and you keep full access until then. You'll get a "
            "confirmation email shortly. You can restart the plan anytime from Account settings.",
        ),
        follow_ups=(
            "Do I lose my saved data?",
            "What happens to my files after that date?",
        ),
        follow_up_answer=(
            "Your data stays saved for 90 days after the subscription ends. If you restart the plan "
            "within that time, everything will be where you left it. After 90 days it is deleted for good."
        ),
        notes=(
            "Retention offer declined. Customer is on the legacy price, do not offer the legacy price to "
            "anyone else.",
            "Customer threatened to post a bad review. Cancelled without the usual retention call.",
        ),
    ),
    Intent(
        name="invoice_copy",
        category="billing",
        subjects=("Invoice for order {order}", "Need a copy of my invoice", "Receipt request"),
        questions=(
            "Could you send me a copy of the invoice for order {order}? I need it for my expense report.",
            "I need a VAT invoice for order {order} with my company name on it.",
            "Where can I download the receipt for order {order}?",
        ),
        answers=(
            "I've emailed you a PDF copy of the invoice for order {order}. You can also download any "
            "invoice yourself under Account settings, then Orders, then Download invoice. If you need a "
            "company name or VAT number on it, add them under Billing details and the invoice will "
            "update automatically.",
            "A PDF of the invoice for order {order} is now in your inbox. Any invoice can also be "
            "downloaded from Account settings, then Orders, then Download invoice. To show a company name "
            "or VAT number, add them under Billing details and the invoice updates automatically.",
        ),
        follow_ups=(
            "Can you also send the invoices for the last three months?",
            "Could the invoice go to my accountant as well?",
        ),
        follow_up_answer=(
            "Done: I've sent the invoices from the last three months to the same address. To have future "
            "invoices copied to your accountant, add their address under Billing details, then Invoice "
            "recipients."
        ),
        notes=(
            "Invoice numbering gap in March, finance is aware. Don't explain it to customers.",
            "Customer asked before under another account. Merged duplicates, kept {email}.",
        ),
    ),
    Intent(
        name="change_address",
        category="shipping",
        subjects=("Change delivery address", "Wrong address on order {order}", "Update my address"),
        questions=(
            "I moved last week. Can you change the delivery address for order {order} to {street}?",
            "I put the wrong address on order {order}. The right one is {street}.",
            "Please ship order {order} to my new address: {street}.",
        ),
        answers=(
            "I've updated the delivery address for order {order}, and the carrier has the new details. "
            "Your shipping confirmation will show the change within the hour. For future orders, please "
            "also update the default address under Account settings, then Addresses, so this doesn't "
            "happen again.",
            "The delivery address for order {order} is now updated and the carrier has been notified. "
            "The change shows in your shipping confirmation within the hour. To avoid this next time, "
            "update your default address under Account settings, then Addresses.",
        ),
        follow_ups=(
            "Thanks. Does this delay the delivery?",
            "Does the change cost anything?",
        ),
        follow_up_answer=(
            "No extra cost, and the delivery date stays the same because the package hadn't left the "
            "warehouse yet. You'll get a new tracking email as soon as it ships."
        ),
        notes=(
            "Address change after the package left the warehouse needs a carrier intercept ($15 cost to "
            "us). Approved this once.",
            "Old address was flagged for two failed deliveries. Customer phone {phone}.",
        ),
    ),
    Intent(
        name="damaged_item",
        category="returns",
        subjects=("Item arrived damaged", "Broken {item}", "Damaged package, order {order}"),
        questions=(
            "My {item} from order {order} arrived broken. The box was crushed. What can I do?",
            "The {item} I received (order {order}) is cracked. I'd like a replacement.",
            "Order {order} came today but the {item} is damaged. I have photos if you need them.",
        ),
        answers=(
            "I'm sorry the {item} arrived damaged. I've sent a replacement for order {order} at no cost; "
            "it ships within one business day and you'll get a tracking email. There's no need to return "
            "the damaged one, please recycle it. If anything else in the package is affected, reply here "
            "and we'll sort it out.",
            "Sorry to hear the {item} was damaged in transit. A free replacement for order {order} ships "
            "within one business day, and a tracking email will follow. You don't need to send the "
            "damaged item back, please recycle it. If anything else in the box was affected, just reply "
            "here.",
        ),
        follow_ups=(
            "Can I get a refund instead of a replacement?",
            "I'd rather have my money back, is that possible?",
        ),
        follow_up_answer=(
            "Of course. I've cancelled the replacement and refunded ${amount} for order {order} to your "
            "original payment method. It shows within 5-10 business days, and you still don't need to "
            "return the damaged item."
        ),
        notes=(
            "Third damaged parcel from this warehouse this week. Reported to logistics, supplier packaging "
            "issue.",
            "Customer sent photos from {email}; damage looks real. Replacement approved without return.",
        ),
    ),
    Intent(
        name="two_factor",
        category="account",
        subjects=("Lost my phone, can't log in", "Two-factor code not arriving", "2FA problem"),
        questions=(
            "I got a new phone and now I can't get the two-factor code to log in.",
            "The 2FA text message never arrives. I'm stuck at the login screen.",
            "I lost my phone and my authenticator app with it. How do I get into my account?",
        ),
        answers=(
            "I've verified your identity and reset two-factor authentication on your account. Sign in "
            "with your password and you'll be asked to set up 2FA again; scan the QR code with your "
            "authenticator app on the new phone. Please save the new backup codes somewhere safe, so you "
            "can get in if this happens again.",
            "Two-factor authentication on your account is now reset, after a quick identity check. When "
            "you sign in with your password, you'll be asked to set up 2FA again; scan the QR code with "
            "the authenticator app on your new phone. Keep the new backup codes somewhere safe for next "
            "time.",
        ),
        follow_ups=(
            "Can I use text messages instead of an app?",
            "Is there a way to use SMS codes instead?",
        ),
        follow_up_answer=(
            "Yes. During the 2FA setup choose Text message instead of Authenticator app, and enter the "
            "mobile number you want the codes sent to. An app is a bit safer, but both work."
        ),
        notes=(
            "Identity check passed with the billing address and the card ending {last4}. Do not reset 2FA "
            "over chat without this.",
            "Customer called from {phone}, which is not the number on file. Double-checked before reset.",
        ),
    ),
    Intent(
        name="wrong_item",
        category="returns",
        subjects=("Wrong item received", "Not what I ordered, order {order}", "Got someone else's item"),
        questions=(
            "I ordered a {item} (order {order}) but received something completely different.",
            "Order {order} arrived with the wrong item inside. I need the {item} I paid for.",
            "You sent me the wrong size for order {order}. How do I exchange it?",
        ),
        answers=(
            "Sorry about the mix-up with order {order}. I've shipped the correct {item} today by express "
            "delivery at no cost. I've also emailed you a prepaid return label; please send the wrong "
            "item back within 30 days, in any box. You'll get a tracking email for the new package "
            "shortly.",
            "Apologies for the mix-up on order {order}. The correct {item} ships today by express "
            "delivery, free of charge. A prepaid return label is in your inbox; please send the wrong item "
            "back within 30 days in any box. A tracking email for the new package will follow shortly.",
        ),
        follow_ups=(
            "Do I have to use the original packaging for the return?",
            "Can I drop the return off at a post office?",
        ),
        follow_up_answer=(
            "Any sturdy box works, the original packaging isn't needed. Attach the prepaid label and drop "
            "it at any post office or carrier drop-off point; the label covers the cost."
        ),
        notes=(
            "Picking error at the warehouse, bin labels swapped. Warehouse manager informed.",
            "Customer's account {email} shows three wrong-item claims this year. Watch for abuse.",
        ),
    ),
    Intent(
        name="update_payment",
        category="billing",
        subjects=("Payment failed", "Update my card", "Card declined on renewal"),
        questions=(
            "My payment failed for the {plan} renewal. I have a new card, how do I update it?",
            "I got an email that my card was declined. I want to switch to a different card.",
            "My card expired and the subscription renewal failed. Can you update the payment method?",
        ),
        answers=(
            "For your security we never take card details by email or chat. Please go to Account "
            "settings, then Billing, then Payment methods, and add the new card there. Once it's saved, "
            "we retry the failed {plan} renewal automatically within 24 hours, and your access continues "
            "without interruption.",
            "To keep your details safe, we can't take card numbers over email or chat. Please add the new "
            "card under Account settings, then Billing, then Payment methods. Once it's saved, the failed "
            "{plan} renewal is retried automatically within 24 hours and your access continues as normal.",
        ),
        follow_ups=(
            "Am I going to be charged twice?",
            "Is my account still active in the meantime?",
        ),
        follow_up_answer=(
            "No, you'll only be charged once: the failed attempt was never taken. Your account stays "
            "fully active for a 7-day grace period while the renewal is retried."
        ),
        notes=(
            "Customer pasted the full card number in the ticket. Redacted in the helpdesk, card ending "
            "{last4}. Remind the team about PCI rules.",
            "Payment processor shows the issuing bank blocked the charge as suspected fraud.",
        ),
    ),
)
