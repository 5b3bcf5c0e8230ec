"""Salesforce Service Cloud: `{"Case": {...}, "EmailMessages": [...], "CaseComments": [...]}` to a `Ticket`.

Salesforce has no ticket document, so the integration (a Change Data Capture subscriber or a
record-triggered Flow) assembles this envelope from the Case record and its related records, with
REST field names; `connectors/formats/README.md` lists the fields read. `Case.IsClosed` is resolved.
An EmailMessage with `Incoming: true` is the customer, otherwise a public agent reply (drafts skipped).
A CaseComment is an agent's, or the customer's when `CreatedBy.UserType` is a portal/community user;
`IsPublished: false` is internal. `Case.Description` is the first customer message only when no
incoming email exists (web-to-case); with email-to-case it repeats the first email.
CSAT: the optional `Satisfaction: {"Score": s, "ScaleMin": 1, "ScaleMax": 5}` (a survey's answer)
maps linearly onto 1-5; the scale defaults to 1-5, so a score already on 1-5 is kept as is.
The model's draft: the Case field `kafka.ai_assist.field` (a custom field such as `AI_Draft__c`).
"""

from __future__ import annotations

import math
from typing import Any

from connectors.formats.payload import (
    ai_assist_from,
    build_ticket,
    list_at,
    load_object,
    object_at,
    required,
    text_at,
    unsupported,
)
from connectors.formats.text import clean_body
from daemon.config import AiAssistMapping
from daemon.tickets import Role, Ticket, TicketParseError

EMAIL_STATUS_DRAFT = "5"
CUSTOMER_USER_TYPES = frozenset({
    "PowerCustomerSuccess", "CustomerSuccess", "CspLitePortal", "CsnOnly", "SelfService", "Guest",
})


def parse(value: bytes, ai_assist: AiAssistMapping | None = None) -> Ticket:
    data = load_object(value)
    if not isinstance(data.get("Case"), dict):
        raise unsupported("Salesforce", "Case", "a 'Case' object with 'EmailMessages' and 'CaseComments'")
    case = data["Case"]
    case_id = required(case, "Id", "Case.Id")
    is_closed = required(case, "IsClosed", "Case.IsClosed")
    if not isinstance(is_closed, bool):
        raise TicketParseError("invalid_ticket", "Case.IsClosed: expected a boolean")
    emails = list_at(data, "EmailMessages", "EmailMessages", optional=True)
    comments = list_at(data, "CaseComments", "CaseComments", optional=True)

    contact = object_at(case, "Contact", "Case.Contact", optional=True)
    requester = {
        "id": case.get("ContactId") or contact.get("Id"),
        "name": contact.get("Name") or case.get("SuppliedName"),
        "email": case.get("ContactEmail") or contact.get("Email") or case.get("SuppliedEmail"),
        "phone": case.get("ContactPhone") or case.get("SuppliedPhone"),
    }
    if not any(requester.values()):
        requester = None

    messages = []
    for index, email in enumerate(emails):
        if str(email.get("Status")) == EMAIL_STATUS_DRAFT:
            continue
        incoming = email.get("Incoming") is True
        messages.append({
            "author_role": Role.customer if incoming else Role.agent,
            "author_name": email.get("FromName"),
            "author_email": email.get("FromAddress"),
            "public": True,
            "body": _email_text(email, index),
            "created_at": email.get("MessageDate") or email.get("CreatedDate"),
        })
    description = text_at(case, "Description", "Case.Description")
    if description and not any(email.get("Incoming") is True for email in emails):
        messages.insert(0, {
            "author_role": Role.customer,
            "author_name": requester and requester["name"],
            "author_email": requester and requester["email"],
            "public": True,
            "body": clean_body(description, html=False),
            "created_at": case.get("CreatedDate"),
        })
    for index, comment in enumerate(comments):
        author = object_at(comment, "CreatedBy", f"CaseComments.{index}.CreatedBy", optional=True)
        customer = str(author.get("UserType")) in CUSTOMER_USER_TYPES
        text = text_at(comment, "CommentBody", f"CaseComments.{index}.CommentBody", optional=False)
        messages.append({
            "author_role": Role.customer if customer else Role.agent,
            "author_name": author.get("Name"),
            "author_email": author.get("Email"),
            "public": comment.get("IsPublished") is True,
            "body": clean_body(text, html=False),
            "created_at": comment.get("CreatedDate"),
        })

    status = "closed" if is_closed else str(case.get("Status") or "open")
    draft_field = case.get(ai_assist.field) if ai_assist and ai_assist.field else None
    return build_ticket({
        "ticket_id": case_id,
        "status": status,
        "channel": case.get("Origin"),
        "subject": case.get("Subject"),
        "category": case.get("Type") or case.get("Reason"),
        "ai_assist": ai_assist_from(draft_field, [], ai_assist, messages,  # a Case has no tags
                                    f"Case.{ai_assist.field if ai_assist else ''}"),
        "csat": _csat(object_at(data, "Satisfaction", "Satisfaction", optional=True)),
        "created_at": case.get("CreatedDate"),
        "updated_at": case.get("LastModifiedDate") or case.get("SystemModstamp"),
        "resolved_at": case.get("ClosedDate"),
        "requester": requester,
        "messages": messages,
    })


def _email_text(email: dict[str, Any], index: int) -> str:
    if isinstance(email.get("HtmlBody"), str) and email["HtmlBody"].strip():
        return clean_body(email["HtmlBody"], html=True)
    if isinstance(email.get("TextBody"), str):
        return clean_body(email["TextBody"], html=False)
    raise TicketParseError("invalid_ticket", f"EmailMessages.{index}.TextBody: Field required")


def _csat(satisfaction: dict[str, Any]) -> float | None:
    score = satisfaction.get("Score")
    low, high = satisfaction.get("ScaleMin", 1), satisfaction.get("ScaleMax", 5)
    numbers = (score, low, high)
    if not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers) or high <= low:
        return None
    if not low <= score <= high:
        raise TicketParseError("invalid_ticket", "Satisfaction.Score: outside ScaleMin..ScaleMax")
    try:
        csat = 1 + 4 * (score - low) / (high - low)
    except (OverflowError, ZeroDivisionError):  # an integer past a float's range; a scale finer than a float
        csat = math.nan
    if not math.isfinite(csat):  # NaN from infinite numbers, or one of the above
        raise TicketParseError("invalid_ticket", "Satisfaction: Score, ScaleMin and ScaleMax must be finite numbers")
    return round(csat, 2)
