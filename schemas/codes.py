"""Constrained string types shared by every event: codes as customs systems write them.

Each type is an ``Annotated[str, ...]`` so pydantic validates it, the JSON Schema shows
the rule to integrators, and the ClickHouse column stays a plain string.

Digits are written ``[0-9]``, never ``\\d``: pydantic's regex engine gives ``\\d`` every Unicode
digit (Arabic-Indic, full-width...), which no customs system writes and which would reach the
store as a code no query finds; JSON Schema's ``\\d`` is ASCII, so ``[0-9]`` says the same to both.
"""

from __future__ import annotations

from typing import Annotated

import pycountry
from pydantic import AfterValidator, Field

# ISO 3166-1 alpha-2, plus the codes the EU customs code lists add for places that are
# not ISO countries but are declared as origins or dispatch countries.
_CUSTOMS_EXTRA_COUNTRIES = {
    "XK": "Kosovo",
    "XI": "United Kingdom (Northern Ireland)",
    "XU": "United Kingdom (excluding Northern Ireland)",
    "XC": "Ceuta",
    "XL": "Melilla",
    "XS": "Serbia (legacy code)",
}
COUNTRY_CODES: frozenset[str] = frozenset(c.alpha_2 for c in pycountry.countries) | frozenset(_CUSTOMS_EXTRA_COUNTRIES)
CURRENCY_CODES: frozenset[str] = frozenset(c.alpha_3 for c in pycountry.currencies)


def _known_country(code: str) -> str:
    if code not in COUNTRY_CODES:
        raise ValueError(f"unknown country code {code!r}: expected ISO 3166-1 alpha-2 (e.g. 'CN', 'FR')")
    return code


def _known_currency(code: str) -> str:
    if code not in CURRENCY_CODES:
        raise ValueError(f"unknown currency code {code!r}: expected ISO 4217 (e.g. 'EUR', 'USD')")
    return code


CountryCode = Annotated[
    str,
    Field(pattern=r"^[A-Z]{2}$", json_schema_extra={"enum": sorted(COUNTRY_CODES)}),
    AfterValidator(_known_country),
]
CurrencyCode = Annotated[
    str,
    Field(pattern=r"^[A-Z]{3}$", json_schema_extra={"enum": sorted(CURRENCY_CODES)}),
    AfterValidator(_known_currency),
]
HsCode = Annotated[str, Field(pattern=r"^[0-9]{6}$", description="Harmonized System subheading, 6 digits")]
CnCode = Annotated[str, Field(pattern=r"^[0-9]{8}$", description="Combined Nomenclature code, 8 digits")]
TaricCode = Annotated[str, Field(pattern=r"^[0-9]{10}$", description="TARIC code, 10 digits")]
Eori = Annotated[
    str,
    Field(
        pattern=r"^[A-Z]{2}[A-Za-z0-9]{1,15}$",
        description="Economic Operator Registration and Identification number: country + up to 15 characters",
    ),
]
Mrn = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{2}[A-Z]{2}[A-Z0-9]{14}$",
        description="Movement Reference Number: 2-digit year, country, 14 characters",
    ),
]
OfficeCode = Annotated[
    str,
    Field(pattern=r"^[A-Z]{2}[A-Z0-9]{6}$", description="Customs office reference number (COL), e.g. FR000690"),
]
UnLocode = Annotated[str, Field(pattern=r"^[A-Z]{2}[A-Z2-9]{3}$", description="UN/LOCODE of a place, e.g. CNSHA")]
ExciseNumber = Annotated[
    str,
    Field(pattern=r"^[A-Z]{2}[A-Z0-9]{11}$", description="SEED excise number: country + 11 characters"),
]
Arc = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{2}[A-Z]{2}[A-Z0-9]{16}[0-9]$",
        description="Administrative Reference Code of an e-AD: year, member state, 16 characters, check digit",
    ),
]
ProcedureCode = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{4}$",
        description="Requested and previous procedure, e.g. 4000 release for free circulation, "
        "4200 with onward-supply VAT exemption, 5100 inward processing, 7100 customs warehousing",
    ),
]
PreferenceCode = Annotated[
    str, Field(pattern=r"^[0-9]{3}$", description="Preference code, e.g. 100 third-country duty, 300 tariff preference")
]
