"""Vigie's event models: the one source of truth for field names and types.

Inbound events (published by integrators and officers) share an :class:`Envelope`
carrying the idempotency key ``event_id``, the ``schema_version``, the ``event_time`` and
the ``source_system``. Outbound records (:class:`RiskScore`, :class:`Alert`,
:class:`DeadLetter`) are produced by the engine.

Validation is strict: unknown fields are rejected, numbers must be in range, codes must
be real codes. Business inconsistencies (a duty that does not match its base, a unit value
far below the norm) are *not* rejected: detecting them is the engine's job.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from .codes import (
    Arc,
    CnCode,
    CountryCode,
    CurrencyCode,
    Eori,
    ExciseNumber,
    HsCode,
    Mrn,
    OfficeCode,
    PreferenceCode,
    ProcedureCode,
    TaricCode,
    UnLocode,
)

SCHEMA_VERSION = "1.0"
"""Version written by this engine. Any 1.x is read: minor versions only add optional fields."""
SUPPORTED_MAJOR = 1

EventId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        description="Globally unique id of this event (a UUID is recommended). "
        "Downstream sinks are idempotent on it: re-sending an event never counts it twice.",
    ),
]
NonNegativeEur = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)]
PositiveMass = Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False, description="kilograms")]
FreeText = Annotated[str, Field(min_length=1, max_length=512)]
Score01 = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]

_ZONES: dict[timedelta, timezone] = {timedelta(0): UTC}
_ZONES_HELD = 64  # offsets in use are few; a stream of odd ones must not grow this for ever


def standard_zone(value: datetime) -> datetime:
    """``value`` with its UTC offset as a :class:`datetime.timezone` (``timezone.utc`` for +00:00):
    the same instant, wall clock and offset.

    Why: pydantic gives a parsed time its own ``TzInfo``, whose ``utcoffset()`` is a call into
    Python on every comparison, subtraction or conversion of two times with different zone
    objects, and the hot paths read ``timezone.utc`` times in C; scoring decoded events took
    about a tenth longer.

    >>> from pydantic import TypeAdapter
    >>> parsed = TypeAdapter(AwareDatetime).validate_json('"2026-03-02T08:00:00+01:00"')
    >>> standard_zone(parsed).tzinfo, standard_zone(parsed) == parsed
    (datetime.timezone(datetime.timedelta(seconds=3600)), True)
    """
    zone = value.tzinfo
    if type(zone) is timezone:
        return value
    offset = zone.utcoffset(value)  # value.utcoffset() would check the answer again: AwareDatetime did
    standard = _ZONES.get(offset)
    if standard is None:
        standard = timezone(offset)
        if len(_ZONES) < _ZONES_HELD:
            _ZONES[offset] = standard
    # The same wall clock in the equal zone; the constructor costs half what replace() or astimezone() do.
    # (fold is 0 for a parsed time, and means nothing for a fixed offset.)
    return datetime(
        value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond, standard
    )


Instant = Annotated[AwareDatetime, AfterValidator(standard_zone)]
"""An aware date and time (an offset is required), its zone a :class:`datetime.timezone`."""

EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_EVENT_TIME = datetime(2100, 1, 1, tzinfo=UTC)
"""Inbound times must fall in [2000-01-01, 2100-01-01) UTC. Outside it a time is a typo or a unit
error (seconds for milliseconds): ClickHouse's ``DateTime`` stops in 2106, and the store's TTL on
event time would silently drop a row dated decades back."""


def _plausible(value: datetime) -> datetime:
    if not EARLIEST_EVENT_TIME <= value < LATEST_EVENT_TIME:
        raise ValueError(f"{value.isoformat()} is outside the accepted range 2000-01-01 to 2099-12-31 (UTC)")
    return value


EventInstant = Annotated[Instant, AfterValidator(_plausible)]
"""An inbound :data:`Instant` between 2000-01-01 and 2099-12-31 (UTC). Engine outputs keep :data:`Instant`."""


class TransportMode(StrEnum):
    """Mode of transport at the EU border (ICS2 filing types)."""

    SEA = "sea"
    AIR = "air"
    ROAD = "road"
    RAIL = "rail"
    POSTAL = "postal"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)


class Envelope(_Strict):
    """Fields every inbound event carries."""

    event_id: EventId
    schema_version: str = Field(
        default=SCHEMA_VERSION,
        pattern=r"^[0-9]+\.[0-9]+$",  # ASCII digits only: see codes.py
        description=f"Schema version the publisher wrote, 'major.minor'; this engine reads {SUPPORTED_MAJOR}.x",
    )
    event_time: EventInstant = Field(
        description="When the fact happened (filing, acceptance, control), with offset; 2000 to 2099"
    )
    source_system: str = Field(min_length=1, max_length=64, description="System that published the event")

    @field_validator("schema_version")
    @classmethod
    def _supported_version(cls, value: str) -> str:
        major = int(value.split(".", 1)[0])
        if major != SUPPORTED_MAJOR:
            raise ValueError(f"schema version {value} is not supported: this engine reads {SUPPORTED_MAJOR}.x")
        return value


class Party(_Strict):
    """A consignor, consignee, seller or notify party."""

    name: FreeText
    country: CountryCode
    eori: Eori | None = None


class EnsGoodsItem(_Strict):
    """One goods item of an entry summary declaration."""

    item_number: int = Field(ge=1, le=999)
    hs_code: HsCode
    description: FreeText = Field(description="Goods description as filed (free text)")
    gross_mass_kg: PositiveMass
    packages: int = Field(ge=1, le=10_000_000)


class EntrySummaryDeclaration(Envelope):
    """ICS2 entry summary declaration (ENS), filed before the goods arrive."""

    event_type: Literal["ens"] = "ens"
    ens_reference: Mrn
    transport_mode: TransportMode
    carrier_eori: Eori
    consignor: Party
    consignee: Party
    notify_party: Party | None = None
    transport_document: str = Field(min_length=1, max_length=64, description="Bill of lading, air waybill, CMR")
    countries_of_routing: list[CountryCode] = Field(min_length=1, max_length=99)
    place_of_loading: UnLocode
    first_office_of_entry: OfficeCode
    eta: EventInstant = Field(
        description="Expected date and time of arrival at the first office of entry, with offset; 2000 to 2099"
    )
    goods_items: list[EnsGoodsItem] = Field(min_length=1, max_length=999)


class GoodsItem(_Strict):
    """One goods item of an import declaration. Unit values are judged per item."""

    item_number: int = Field(ge=1, le=999)
    cn_code: CnCode
    taric_code: TaricCode | None = None
    description: FreeText
    origin_country: CountryCode
    dispatch_country: CountryCode
    preference: PreferenceCode = "100"
    net_mass_kg: PositiveMass
    supplementary_units: float | None = Field(
        default=None, gt=0, le=1e10, allow_inf_nan=False, description="Pieces, litres, ... when the CN code has them"
    )
    supplementary_unit_code: str | None = Field(default=None, max_length=16, description="e.g. 'p/st', 'l'")
    invoice_amount: float = Field(gt=0, le=1e12, allow_inf_nan=False)
    invoice_currency: CurrencyCode
    customs_value_eur: float = Field(gt=0, le=1e12, allow_inf_nan=False, description="CIF customs value, EUR")
    statistical_value_eur: NonNegativeEur | None = None
    valuation_method: Literal["1", "2", "3", "4", "5", "6"] = "1"
    duty_rate_pct: float = Field(ge=0, le=1000, allow_inf_nan=False, description="Ad valorem duty rate, percent")
    duty_eur: NonNegativeEur = Field(description="Customs duty (tax type A00)")
    vat_eur: NonNegativeEur = Field(description="Import VAT (tax type B00)")
    excise_eur: NonNegativeEur | None = Field(default=None, description="Excise, for excise goods")

    @model_validator(mode="after")
    def _taric_extends_cn(self) -> GoodsItem:
        if self.taric_code is not None and not self.taric_code.startswith(self.cn_code):
            raise ValueError(f"taric_code {self.taric_code} does not start with cn_code {self.cn_code}")
        return self


class ImportDeclaration(Envelope):
    """Customs declaration for release for free circulation (or another import procedure)."""

    event_type: Literal["declaration"] = "declaration"
    mrn: Mrn
    declarant_eori: Eori
    importer_eori: Eori
    seller: Party
    customs_office: OfficeCode
    procedure_code: ProcedureCode = "4000"
    transport_mode_at_border: TransportMode
    container: bool = False
    ens_reference: Mrn | None = Field(default=None, description="The ENS covering these goods, when known")
    goods_items: list[GoodsItem] = Field(min_length=1, max_length=999)

    @field_validator("goods_items")
    @classmethod
    def _unique_item_numbers(cls, items: list[GoodsItem]) -> list[GoodsItem]:
        numbers = [item.item_number for item in items]
        if len(set(numbers)) != len(numbers):
            raise ValueError("item_number values must be unique within a declaration")
        return items


class ExciseProduct(StrEnum):
    """Harmonised excise product categories."""

    BEER = "beer"
    WINE = "wine"
    INTERMEDIATE = "intermediate"
    SPIRITS = "spirits"
    CIGARETTES = "cigarettes"
    CIGARS = "cigars"
    FINE_CUT_TOBACCO = "fine_cut_tobacco"
    PETROL = "petrol"
    DIESEL = "diesel"
    HEATING_OIL = "heating_oil"


class ExciseRecordType(StrEnum):
    """Which step of an excise movement the record reports."""

    E_AD = "e_ad"
    """Dispatch under duty suspension, with its electronic administrative document."""
    REPORT_OF_RECEIPT = "report_of_receipt"
    RELEASE_FOR_CONSUMPTION = "release_for_consumption"
    EXPORT = "export"


class ExciseMovement(Envelope):
    """An excise record: e-AD dispatch, report of receipt, release for consumption or export."""

    event_type: Literal["excise"] = "excise"
    record_type: ExciseRecordType
    arc: Arc | None = Field(default=None, description="Required for e-AD and report of receipt")
    product_category: ExciseProduct
    cn_code: CnCode
    operator_eori: Eori = Field(description="Authorised warehousekeeper or registered consignee responsible")
    consignor_excise_number: ExciseNumber
    consignee_excise_number: ExciseNumber | None = None
    import_mrn: Mrn | None = Field(default=None, description="Import declaration the goods came in under, if any")
    volume_litres: float | None = Field(default=None, gt=0, le=1e9, allow_inf_nan=False, description="At 15 degC")
    alcohol_strength_pct: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False, description="% vol")
    mass_kg: float | None = Field(default=None, gt=0, le=1e9, allow_inf_nan=False)
    density_kg_per_l_at_15c: float | None = Field(default=None, gt=0.3, lt=2.0, allow_inf_nan=False)
    sticks: int | None = Field(default=None, ge=1, le=10**10, description="Cigarettes or cigars, pieces")
    dispatched_quantity: float = Field(ge=0, le=1e10, allow_inf_nan=False, description="In quantity_unit")
    received_quantity: float | None = Field(default=None, ge=0, le=1e10, allow_inf_nan=False)
    quantity_unit: Literal["l", "kg", "sticks"]
    duty_declared_eur: NonNegativeEur

    @model_validator(mode="after")
    def _arc_when_moving(self) -> ExciseMovement:
        if self.record_type in (ExciseRecordType.E_AD, ExciseRecordType.REPORT_OF_RECEIPT) and self.arc is None:
            raise ValueError(f"arc is required for record_type {self.record_type}")
        return self


class InfringementType(StrEnum):
    UNDERVALUATION = "undervaluation"
    MISCLASSIFICATION = "misclassification"
    FALSE_ORIGIN = "false_origin"
    SPLITTING = "splitting"
    FALSE_DESCRIPTION = "false_description"
    SMUGGLING = "smuggling"
    EXCISE_DIVERSION = "excise_diversion"
    EXCISE_SHORTAGE = "excise_shortage"
    OTHER = "other"


class ControlOutcome(Envelope):
    """An officer's result for a declaration or ENS: the label online models learn from."""

    event_type: Literal["outcome"] = "outcome"
    target_type: Literal["declaration", "ens", "excise"]
    target_reference: str = Field(min_length=1, max_length=64, description="MRN, ENS reference or ARC controlled")
    target_event_id: EventId | None = None
    item_number: int | None = Field(default=None, ge=1, le=999)
    controlled: bool
    positive: bool = False
    infringement_type: InfringementType | None = None
    duty_recovered_eur: NonNegativeEur = 0.0
    tax_recovered_eur: NonNegativeEur = 0.0
    seizure: bool = False
    officer_id: str = Field(min_length=1, max_length=64)
    office: OfficeCode
    selection: Literal["engine_alert", "random", "officer_initiative", "other"] = "other"
    alert_id: EventId | None = None

    @model_validator(mode="after")
    def _coherent(self) -> ControlOutcome:
        if self.positive and not self.controlled:
            raise ValueError("positive is true but controlled is false: only a control can be positive")
        if self.positive and self.infringement_type is None:
            raise ValueError("infringement_type is required when positive is true")
        return self


DetectorName = Literal["undervaluation", "atypical_flow", "operator_behaviour", "excise", "ens_pre_arrival"]


class RiskScore(_Strict):
    """One detector's score for one event (or one goods item of it).

    ``score`` is in [0, 1]: 0 means nothing unusual, 1 means as far from the norm as the
    detector can express. ``reason`` is a sentence an officer can act on; ``reason_fields``
    carry the same figures for dashboards.
    """

    event_type: Literal["risk_score"] = "risk_score"
    score_id: EventId = Field(description="Deterministic: same subject, item and detector give the same id")
    detector: DetectorName
    subject_event_id: EventId
    subject_type: Literal["ens", "declaration", "excise", "outcome"]
    subject_reference: str
    item_number: int | None = None
    event_time: Instant
    office: str
    operator_eori: str | None = None
    cn_code: str | None = None
    origin_country: str | None = None
    score: Score01
    eur_at_stake: NonNegativeEur = Field(description="Duty and taxes at stake if the suspicion is right, EUR")
    reason: str
    reason_fields: dict[str, float | str | None] = Field(default_factory=dict)


class Alert(_Strict):
    """A fused risk high enough to ask an officer for a control."""

    event_type: Literal["alert"] = "alert"
    alert_id: EventId
    subject_event_id: EventId
    subject_type: Literal["ens", "declaration", "excise"]
    subject_reference: str
    event_time: Instant
    office: str
    operator_eori: str | None = None
    transport_mode: str | None = None
    fused_risk: Score01
    rank: int = Field(ge=1, description="Position in the office's queue of alerts of the last 24 h, 1 = highest")
    selection: Literal["exploitation", "exploration"] = "exploitation"
    contributions: dict[str, float] = Field(description="Each detector's share of the fused risk")
    reasons: list[str] = Field(min_length=1, description="Detectors' reasons, strongest first")
    eur_at_stake: NonNegativeEur
    eta: Instant | None = None
    lead_time_hours: float | None = Field(
        default=None, description="Hours between raising the alert and the expected arrival (negative: arrived)"
    )


class DeadLetter(_Strict):
    """An input the engine could not accept, kept whole with the reason."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    event_type: Literal["dead_letter"] = "dead_letter"
    dead_letter_id: str = Field(description="Hash of source and bytes: re-reading the same input is idempotent")
    received_at: Instant
    source: str = Field(description="Where the bytes came from: 'file:PATH:LINE' or 'kafka:TOPIC:PARTITION:OFFSET'")
    reason: str
    field: str | None = Field(default=None, description="Dotted path of the first offending field, when known")
    raw_size: int = Field(ge=0)
    raw: bytes = Field(description="The original bytes, unchanged")


InboundEvent = Annotated[
    EntrySummaryDeclaration | ImportDeclaration | ExciseMovement | ControlOutcome,
    Field(discriminator="event_type"),
]
INBOUND_MODELS: dict[str, type[Envelope]] = {
    "ens": EntrySummaryDeclaration,
    "declaration": ImportDeclaration,
    "excise": ExciseMovement,
    "outcome": ControlOutcome,
}
