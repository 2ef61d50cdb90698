"""The traders of the synthetic world: importers with habits, customs brokers, tax warehouses.

Importers (``n_operators`` of them, EORI ``FR`` + 14 digits) keep the same habits for the
whole stream, which is what lets detectors learn a norm per operator:

* a sector and 1-8 preferred CN codes (weights drawn once);
* 1-3 preferred origins, picked among the usual origins of those codes;
* a usual transport mode (consistent with the main origin and the goods' value density:
  phones fly, steel sails) and, through a fixed ``bias`` in [0, 1), a usual carrier,
  office of entry and invoice currency;
* a consignment size factor (log-normal, sigma 0.5) and a price-level factor (log-normal,
  sigma 0.12) multiplying every unit value it declares;
* a customs broker (pool of 60) or, for a share of the biggest importers, itself;
* a Zipf-like activity weight ``(rank + 10) ** -1.1``: the top importer files about 2 % of
  all declarations, the median one a few a day at the default rate. E-commerce platforms
  (postal and express parcels) get four times the weight of their rank.

About 6 % of operators are excise traders (beer, wine, spirits, tobacco, fuel) with a
registered-consignor excise number; they form a separate pool so that the share of excise
consignments is set by ``GeneratorConfig.excise_share``. Names are fictional.
"""

from __future__ import annotations

import random
from bisect import bisect
from dataclasses import dataclass, field
from itertools import accumulate
from operator import itemgetter

from .catalogue import (
    COUNTRY_REGION,
    ECOMMERCE_CODES,
    INLAND_OFFICES,
    REGIONS,
    SECTORS,
    Commodity,
)

GENERAL_SECTOR_SHARES: dict[str, float] = {
    "textiles": 0.20, "footwear": 0.07, "toys": 0.07, "electronics": 0.15, "vehicles": 0.05, "steel": 0.06,
    "aluminium": 0.04, "ceramics": 0.04, "food": 0.08, "furniture": 0.06, "chemicals": 0.05, "misc": 0.08,
    "ecommerce": 0.05,
}  # fmt: skip
"""Share of (non-excise) importers by sector."""
EXCISE_SECTOR_SHARES: dict[str, float] = {"beer": 0.2, "wine": 0.3, "spirits": 0.25, "tobacco": 0.1, "fuel": 0.15}
EXCISE_OPERATOR_SHARE = 0.06
"""Share of the ``n_operators`` that are excise traders."""
N_DECLARANTS = 60
N_WAREHOUSES = 120
SPECIAL_PROCEDURES = (("4200", 0.04), ("5100", 0.02), ("7100", 0.02))
"""(procedure, share of operators using it for about half of their declarations)."""

_SURNAMES = (
    "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau", "Simon",
    "Laurent", "Lefebvre", "Michel", "Garcia", "David", "Bertrand", "Roux", "Vincent", "Fournier", "Morel",
    "Girard", "Andre", "Mercier", "Dupont", "Lambert", "Bonnet", "Francois", "Martinez", "Legrand", "Garnier",
    "Faure", "Rousseau", "Blanc", "Guerin", "Muller", "Henry", "Roussel", "Nicolas", "Perrin", "Morin",
    "Mathieu", "Clement", "Gauthier", "Dumont", "Lopez", "Fontaine", "Chevalier", "Robin", "Masson",
)  # fmt: skip
_PLACES = (
    "Atlantique", "Rhone", "Provence", "Normandie", "Alsace", "Loire", "Seine", "Bretagne", "Aquitaine", "Savoie",
    "Picardie", "Lorraine", "Occitanie", "Vendee", "Auvergne", "Flandre", "Gascogne", "Artois", "Jura", "Azur",
)  # fmt: skip
_SECTOR_WORDS: dict[str, tuple[str, ...]] = {
    "textiles": ("Textiles", "Mode", "Confection", "Habillement"),
    "footwear": ("Chaussures", "Footwear", "Bottier"),
    "toys": ("Jouets", "Loisirs", "Sports et Loisirs"),
    "electronics": ("Electronique", "Digital", "Energie Solaire", "High-Tech"),
    "vehicles": ("Cycles", "Automobiles", "Pneus", "Mobilite"),
    "steel": ("Aciers", "Metaux", "Visserie", "Negoce Acier"),
    "aluminium": ("Aluminium", "Profiles", "Alu Industrie"),
    "ceramics": ("Ceramiques", "Arts de la Table", "Carrelages"),
    "food": ("Primeurs", "Maree", "Import Alimentaire", "Cafes"),
    "furniture": ("Meubles", "Ameublement", "Deco Maison"),
    "chemicals": ("Chimie", "Plastiques", "Engrais"),
    "misc": ("Distribution", "Bazar", "Pharma", "Outillage"),
    "ecommerce": ("E-Commerce", "Marketplace", "Online Retail"),
    "beer": ("Brasseries", "Bieres du Monde"),
    "wine": ("Vins", "Caves", "Vignobles du Monde"),
    "spirits": ("Spiritueux", "Distillerie", "Rhums et Whiskies"),
    "tobacco": ("Tabacs", "Manufacture de Tabac"),
    "fuel": ("Petroles", "Carburants", "Energies"),
}
_WAREHOUSE_WORDS = ("Logistique", "Stockage", "Depot", "Distribution")
_LEGAL_FORMS = ("SAS", "SARL", "SA", "SASU", "EURL")
_SUPPLIER_STYLE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "CN": (("Ningbo", "Shenzhen", "Yiwu", "Guangzhou", "Xiamen", "Qingdao", "Dongguan", "Foshan", "Tianjin"),
           ("Trading Co., Ltd", "Industrial Co., Ltd", "Import & Export Co., Ltd", "Manufacturing Co., Ltd")),
    "VN": (("Saigon", "Hanoi", "Dong Nai", "Binh Duong", "Haiphong"), ("JSC", "Co., Ltd")),
    "IN": (("Mumbai", "Tiruppur", "Ludhiana", "Delhi", "Chennai", "Agra"), ("Pvt Ltd", "Exports Pvt Ltd")),
    "TR": (("Istanbul", "Bursa", "Izmir", "Denizli", "Gaziantep"), ("A.S.", "Tekstil A.S.", "Ltd Sti")),
    "GB": (("London", "Manchester", "Glasgow", "Leeds", "Speyside"), ("Ltd", "plc", "Trading Ltd")),
    "US": (("Atlantic", "Pacific", "Midwest", "Lone Star", "Empire"), ("Inc.", "LLC", "Corp.")),
    "CH": (("Basel", "Geneve", "Zurich", "Lugano"), ("AG", "SA", "GmbH")),
    "MY": (("Klang", "Penang", "Johor"), ("Sdn Bhd",)),
    "TH": (("Bangkok", "Chonburi", "Rayong"), ("Co., Ltd", "Public Co., Ltd")),
    "BD": (("Dhaka", "Chattogram", "Gazipur"), ("Ltd", "Garments Ltd", "Knitwear Ltd")),
    "PK": (("Karachi", "Lahore", "Faisalabad", "Sialkot"), ("(Pvt) Ltd", "Textile Mills Ltd")),
    "MA": (("Casablanca", "Tanger", "Agadir"), ("SARL", "SA")),
    "TN": (("Sfax", "Sousse", "Tunis"), ("SARL", "SA")),
}  # fmt: skip
_GENERIC_SUPPLIER = (("Global", "United", "Prime", "Golden", "Star", "Royal", "Eastern", "Ocean", "Summit"),
                     ("Ltd", "Co.", "Export Ltd", "S.A.", "Trading"))  # fmt: skip


@dataclass(slots=True, eq=False)
class Operator:
    """An importer (or an excise trader) with persistent habits. See the module docstring."""

    eori: str
    name: str
    sector: str
    codes: tuple[Commodity, ...]
    code_cum: tuple[float, ...]
    origins: tuple[str, ...]
    origin_cum: tuple[float, ...]
    mode: str
    size: float
    """Multiplier of the commodity's typical consignment mass (median 1)."""
    price_factor: float
    """Multiplier of every unit value this operator declares (median 1, log-normal sigma 0.12)."""
    declarant_eori: str
    declarant_name: str
    max_items: int
    """Most goods items per declaration (1-5)."""
    bias: float
    """Fixed draw in [0, 1) selecting the operator's usual carrier, office, currency."""
    inland_office: str | None
    special_procedure: str | None
    excise_number: str | None = None
    weight: float = 0.0
    """Relative activity (share of arrivals within its pool, before normalisation)."""
    suppliers: dict[str, str] = field(default_factory=dict)
    """Supplier (seller, consignor) name per country, created on first use."""


@dataclass(frozen=True, slots=True)
class Warehouse:
    """A tax warehouse receiving goods under excise duty suspension."""

    excise_number: str
    eori: str
    country: str
    name: str


@dataclass(slots=True)
class Population:
    """Every trader of a run. ``*_cum`` are cumulative activity weights for bisection."""

    general: list[Operator]
    general_cum: list[float]
    excise: list[Operator]
    excise_cum: list[float]
    declarants: list[tuple[str, str]]
    warehouses: list[Warehouse]
    eoris: set[str]

    def pick_general(self, rng: random.Random) -> Operator:
        """A non-excise importer, drawn by activity weight."""
        return self.general[bisect(self.general_cum, rng.random() * self.general_cum[-1])]

    def pick_excise(self, rng: random.Random) -> Operator:
        """An excise trader, drawn by activity weight."""
        return self.excise[bisect(self.excise_cum, rng.random() * self.excise_cum[-1])]


def weighted_choice(rng: random.Random, items: tuple[str, ...], cum: tuple[float, ...]) -> str:
    """One of ``items`` drawn with cumulative weights ``cum``."""
    return items[bisect(cum, rng.random() * cum[-1])]


def choose_pairs(rng: random.Random, pairs: tuple[tuple[str, float], ...]) -> str:
    """One key of ``(key, weight)`` pairs, drawn by weight."""
    total = sum(map(itemgetter(1), pairs))
    x = rng.random() * total
    for key, weight in pairs:
        x -= weight
        if x < 0:
            return key
    return pairs[-1][0]


def pick_by_bias(bias: float, pairs: tuple[tuple[str, float], ...]) -> str:
    """The key of ``pairs`` that a persistent draw ``bias`` in [0, 1) lands on."""
    total = sum(map(itemgetter(1), pairs))
    x = bias * total
    for key, weight in pairs:
        x -= weight
        if x < 0:
            return key
    return pairs[-1][0]


def new_eori(rng: random.Random, taken: set[str], country: str = "FR") -> str:
    """A fresh EORI: ``FR`` + 14 digits (a SIRET), never issued before in this run."""
    while True:
        eori = f"{country}{rng.randrange(10**13, 10**14)}"
        if eori not in taken:
            taken.add(eori)
            return eori


_SYLLABLES = ("hua", "jin", "long", "hong", "xin", "da", "tai", "sheng", "feng", "li", "wei", "kang", "yuan", "fu")
_SYLLABLE_COUNTRIES = frozenset(("CN", "HK", "TW", "VN"))
_WORDS = ("Global", "United", "Prime", "Golden", "Star", "Royal", "Eastern", "Ocean", "Summit", "Bright", "Crown")


def supplier_name(rng: random.Random, country: str) -> str:
    """A fictional foreign supplier (seller and consignor) name in the style of ``country``."""
    places, forms = _SUPPLIER_STYLE.get(country, _GENERIC_SUPPLIER)
    if country in _SYLLABLE_COUNTRIES:
        core = (rng.choice(_SYLLABLES) + rng.choice(_SYLLABLES)).capitalize()
    else:
        core = rng.choice(_WORDS)
    return f"{rng.choice(places)} {core} {rng.choice(forms)}"


def usual_mode(rng: random.Random, origin: str, commodity: Commodity, sector: str) -> str:
    """Transport mode an importer of ``commodity`` from ``origin`` usually uses.

    Air is favoured for goods worth more than about 20 EUR/kg (its weight scales with
    (value/20) ** 0.7) and all but excluded below 2 EUR/kg; bulk fuel always sails.
    """
    if sector == "ecommerce":
        return choose_pairs(rng, (("postal", 0.75), ("air", 0.25)))
    region = REGIONS[COUNTRY_REGION[origin]]
    scale = min(8.0, max(0.05, (commodity.unit_value_eur_kg / 20.0) ** 0.7))
    if commodity.unit_value_eur_kg < 2.0 or commodity.package_kg == 0:
        scale = 0.02 if commodity.package_kg else 0.0
    weights = tuple((mode, w * scale if mode == "air" else w) for mode, w in region.modes)
    return choose_pairs(rng, weights)


def _pick_origins(rng: random.Random, codes: tuple[Commodity, ...], weights: list[float]) -> tuple[str, ...]:
    pooled: dict[str, float] = {}
    for com, w in zip(codes, weights, strict=True):
        for origin, ow in zip(com.origins, com.origin_weights, strict=True):
            pooled[origin] = pooled.get(origin, 0.0) + w * ow
    n = min(len(pooled), rng.choice((1, 1, 2, 2, 3)))
    chosen: list[str] = []
    while len(chosen) < n:
        pick = choose_pairs(rng, tuple((k, v) for k, v in pooled.items() if k not in chosen))
        chosen.append(pick)
    return tuple(chosen)


def make_operator(
    rng: random.Random,
    sector: str,
    taken: set[str],
    declarants: list[tuple[str, str]],
    self_declarant: bool = False,
) -> Operator:
    """An importer of ``sector`` with fresh habits (weight left at 0)."""
    pool = ECOMMERCE_CODES if sector == "ecommerce" else SECTORS[sector]
    n_codes = min(len(pool), rng.randint(1, 8))
    codes = tuple(rng.sample(pool, n_codes))
    # Roughly Dirichlet(1) weights: one or two codes dominate, as in real import portfolios.
    code_weights = [rng.expovariate(1.0) + 0.05 for _ in codes]
    origins = _pick_origins(rng, codes, code_weights)
    origin_weights = (0.75, 0.2, 0.05)[: len(origins)]
    eori = new_eori(rng, taken)
    words = (rng.choice(_SURNAMES), rng.choice(_SECTOR_WORDS[sector]), rng.choice(_PLACES), rng.choice(_LEGAL_FORMS))
    name = " ".join(words)
    main = codes[max(range(len(codes)), key=code_weights.__getitem__)]
    declarant = (eori, name) if self_declarant else rng.choice(declarants)
    special = None
    x = rng.random()
    for procedure, share in SPECIAL_PROCEDURES:
        x -= share
        if x < 0:
            special = procedure
            break
    return Operator(
        eori=eori,
        name=name,
        sector=sector,
        codes=codes,
        code_cum=tuple(accumulate(code_weights)),
        origins=origins,
        origin_cum=tuple(accumulate(origin_weights)),
        mode=usual_mode(rng, origins[0], main, sector),
        size=rng.lognormvariate(0.0, 0.5),
        price_factor=rng.lognormvariate(0.0, 0.12),
        declarant_eori=declarant[0],
        declarant_name=declarant[1],
        max_items=1 if sector == "ecommerce" else rng.choice((1, 2, 2, 3, 3, 4, 5)),
        bias=rng.random(),
        inland_office=rng.choice(INLAND_OFFICES) if rng.random() < 0.15 else None,
        special_procedure=special if sector != "ecommerce" else None,
    )


def _excise_number(rng: random.Random, country: str) -> str:
    return f"{country}0{rng.randrange(10**9, 10**10)}"


def build_population(n_operators: int, rng: random.Random) -> Population:
    """``n_operators`` importers (about 6 % excise traders), 60 brokers and 120 tax warehouses."""
    taken: set[str] = set()
    declarants = [
        (new_eori(rng, taken), f"{rng.choice(_SURNAMES)} Transit et Douane {rng.choice(_PLACES)} {form}")
        for form in (rng.choice(_LEGAL_FORMS) for _ in range(N_DECLARANTS))
    ]
    n_excise = max(5, round(n_operators * EXCISE_OPERATOR_SHARE))
    n_general = max(5, n_operators - n_excise)

    sectors = tuple(GENERAL_SECTOR_SHARES)
    sector_cum = tuple(accumulate(GENERAL_SECTOR_SHARES.values()))
    # Ranks are shuffled so that sector and size are independent; the top ~50 importers
    # declare for themselves half of the time (big retailers have their own customs team).
    ranks = list(range(1, n_general + 1))
    rng.shuffle(ranks)
    general: list[Operator] = []
    for rank in ranks:
        sector = weighted_choice(rng, sectors, sector_cum)
        op = make_operator(rng, sector, taken, declarants, self_declarant=rank <= 50 and rng.random() < 0.5)
        op.weight = (rank + 10) ** -1.1 * (4.0 if sector == "ecommerce" else 1.0)
        if rank <= 100:
            op.size *= 1.5
        general.append(op)

    ex_sectors = tuple(EXCISE_SECTOR_SHARES)
    ex_cum = tuple(accumulate(EXCISE_SECTOR_SHARES.values()))
    ex_ranks = list(range(1, n_excise + 1))
    rng.shuffle(ex_ranks)
    excise: list[Operator] = []
    for rank in ex_ranks:
        sector = weighted_choice(rng, ex_sectors, ex_cum)
        op = make_operator(rng, sector, taken, declarants)
        op.weight = (rank + 3) ** -1.0
        op.excise_number = _excise_number(rng, "FR")
        op.special_procedure = None
        excise.append(op)

    warehouses = []
    for _ in range(N_WAREHOUSES):
        country = choose_pairs(rng, (("FR", 0.6), ("DE", 0.1), ("BE", 0.1), ("NL", 0.1), ("IT", 0.05), ("ES", 0.05)))
        warehouses.append(
            Warehouse(
                excise_number=_excise_number(rng, country),
                eori=new_eori(rng, taken, country),
                country=country,
                name=f"Entrepot {rng.choice(_SURNAMES)} {rng.choice(_WAREHOUSE_WORDS)}",
            )
        )
    return Population(
        general=general,
        general_cum=list(accumulate(op.weight for op in general)),
        excise=excise,
        excise_cum=list(accumulate(op.weight for op in excise)),
        declarants=declarants,
        warehouses=warehouses,
        eoris=taken,
    )
