"""Reference tables of the synthetic customs world: goods, places, carriers, tariffs.

Everything here is *plausible*, not official. The goods catalogue holds 83 CN8 codes
spread over the chapters the brief asks for (textiles 61/62/63, footwear 64, toys 95,
electronics 84/85, cycles and cars 87, steel 72/73, aluminium 76, tyres 4011, ceramics 69,
food, furniture, chemicals and the excise goods 2203/2204/2208/2402/2403/2710).

For each code, :class:`Commodity` gives:

* ``duty_pct``: the third-country (conventional) ad valorem rate in percent, close to the
  EU Common Customs Tariff but rounded; specific duties (garlic, bananas, wine) are turned
  into an ad valorem equivalent so that ``duty = customs value x rate`` always holds.
* ``extra_duty_pct``: trade-defence duties (anti-dumping / countervailing, or the garlic
  specific duty) per origin, again as ad valorem equivalents in percent. They are levied on
  top of the conventional rate and are *not* removed by a tariff preference, which is why
  fraudsters claim another origin (``origin_transshipment``). Real measures have company
  rates and extensions to transshipment countries; those refinements are ignored.
* ``unit_value_eur_kg`` and ``sigma``: median customs value in EUR per kg of net mass and
  the standard deviation of its natural logarithm (clean prices are log-normal, 0.3 to 0.6).
* ``mass_kg``: median net mass of one goods item of a full sea consignment (a container or
  a bulk parcel); other modes scale it down (see :data:`MODE_MASS_FACTOR`).
* ``supp_unit`` / ``kg_per_unit``: the supplementary unit (``p/st`` pieces, ``pa`` pairs,
  ``l``, ``l alc. 100 %``, ``1000 p/st``, ``m2``) and the net mass of one unit, so that
  supplementary units follow from the mass.
* ``origins``: main countries of origin with relative weights.

Customs office codes, carrier names and EORI numbers are illustrative (fictional codes and
companies); place names and UN/LOCODEs are real places. Exchange rates are a fixed table
of early-2026 orders of magnitude; excise rates are French-like 2025 rates, rounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate

VAT_RATE = 0.20
"""French standard import VAT rate, applied to customs value + duty + excise."""

LOW_VALUE_THRESHOLD_EUR = 150.0
"""Consignments whose intrinsic value is at most this much are relieved of customs duty
(negligible-value relief); VAT stays due. Excise goods never benefit. ``splitting`` abuses it."""


@dataclass(frozen=True)
class Commodity:
    """One CN8 code with its tariff and the statistical profile of clean imports."""

    cn: str
    description: str
    ens_description: str
    sector: str
    duty_pct: float
    unit_value_eur_kg: float
    sigma: float
    mass_kg: float
    origins: tuple[str, ...]
    origin_weights: tuple[float, ...]
    supp_unit: str | None = None
    kg_per_unit: float | None = None
    extra_duty_pct: tuple[tuple[str, float], ...] = ()
    packaging: float = 1.15
    """Gross mass / net mass of a consignment of these goods."""
    package_kg: float = 15.0
    """Gross kg per package (carton, pallet, coil...); 0 means loose bulk (one 'package')."""
    excise: str | None = None
    """Harmonised excise category (:class:`vigie.schemas.ExciseProduct` value) or None."""
    density: float | None = None
    """kg per litre at 15 degC, for liquids."""
    origin_cum: tuple[float, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin_cum", tuple(accumulate(self.origin_weights)))

    @property
    def hs6(self) -> str:
        """Harmonized System subheading: the first six digits of the CN code."""
        return self.cn[:6]

    def extra_duty(self, origin: str) -> float:
        """Trade-defence duty in percent (ad valorem equivalent) for goods of ``origin``."""
        for country, pct in self.extra_duty_pct:
            if country == origin:
                return pct
        return 0.0


def _pairs(text: str) -> tuple[tuple[str, float], ...]:
    """Parse ``"CN:.6 VN:.3"`` into ``(("CN", 0.6), ("VN", 0.3))``."""
    out = []
    for chunk in text.split():
        key, value = chunk.split(":")
        out.append((key, float(value)))
    return tuple(out)


def _c(
    cn: str,
    description: str,
    ens: str,
    sector: str,
    duty: float,
    uv: float,
    sigma: float,
    mass: float,
    origins: str,
    supp: str | None = None,
    kgu: float | None = None,
    extra: str = "",
    pack: float = 1.15,
    pkg: float = 15.0,
    excise: str | None = None,
    density: float | None = None,
) -> Commodity:
    pairs = _pairs(origins)
    return Commodity(
        cn=cn,
        description=description,
        ens_description=ens,
        sector=sector,
        duty_pct=duty,
        unit_value_eur_kg=uv,
        sigma=sigma,
        mass_kg=mass,
        origins=tuple(p[0] for p in pairs),
        origin_weights=tuple(p[1] for p in pairs),
        supp_unit=supp,
        kg_per_unit=kgu,
        extra_duty_pct=_pairs(extra),
        packaging=pack,
        package_kg=pkg,
        excise=excise,
        density=density,
    )


# fmt: off
COMMODITIES: tuple[Commodity, ...] = (
    # --- textiles (61, 62, 63, 42) --------------------------------------------------------
    _c("61091000", "T-shirts, singlets and other vests of cotton, knitted", "COTTON T-SHIRTS", "textiles",
       12.0, 14.0, 0.45, 2500, "CN:.35 BD:.25 IN:.1 TR:.1 PK:.08 VN:.06 MA:.06", "p/st", 0.18),
    _c("61102099", "Jerseys, pullovers and similar articles of cotton, knitted", "KNITTED PULLOVERS", "textiles",
       12.0, 18.0, 0.45, 2000, "CN:.45 BD:.2 TR:.15 KH:.1 VN:.1", "p/st", 0.35),
    _c("61103099", "Jerseys, pullovers and similar articles of man-made fibres, knitted", "SYNTHETIC PULLOVERS",
       "textiles", 12.0, 15.0, 0.4, 2000, "CN:.5 BD:.2 KH:.15 VN:.15", "p/st", 0.4),
    _c("61046200", "Women's trousers and shorts of cotton, knitted", "LADIES TROUSERS", "textiles",
       12.0, 15.0, 0.45, 1800, "CN:.4 BD:.3 TR:.15 IN:.15", "p/st", 0.3),
    _c("62034231", "Men's trousers of cotton denim", "MENS DENIM JEANS", "textiles",
       12.0, 16.0, 0.4, 3000, "BD:.35 CN:.25 PK:.2 TR:.1 TN:.1", "p/st", 0.6),
    _c("62044200", "Women's dresses of cotton", "LADIES COTTON DRESSES", "textiles",
       12.0, 22.0, 0.5, 1200, "CN:.4 IN:.3 BD:.15 TR:.15", "p/st", 0.3),
    _c("62052000", "Men's shirts of cotton", "MENS COTTON SHIRTS", "textiles",
       12.0, 20.0, 0.45, 1500, "BD:.35 IN:.25 CN:.25 VN:.15", "p/st", 0.25),
    _c("63026000", "Toilet and kitchen linen of terry towelling, of cotton", "COTTON TOWELS", "textiles",
       12.0, 7.0, 0.4, 4000, "PK:.4 IN:.25 TR:.2 CN:.15"),
    _c("63079098", "Other made up textile articles, other", "TEXTILE ARTICLES", "textiles",
       6.3, 8.0, 0.55, 2500, "CN:.6 IN:.2 PK:.1 VN:.1"),
    _c("42022290", "Handbags with outer surface of textile materials", "HANDBAGS", "textiles",
       3.7, 14.0, 0.5, 1500, "CN:.7 VN:.15 IN:.15", "p/st", 0.5),
    # --- footwear (64) ------------------------------------------------------------------
    _c("64029998", "Footwear with outer soles and uppers of rubber or plastics, other", "PLASTIC FOOTWEAR",
       "footwear", 16.9, 12.0, 0.45, 4000, "CN:.6 VN:.25 ID:.1 KH:.05", "pa", 0.7, pkg=12),
    _c("64039993", "Footwear with uppers of leather, for women, other", "LADIES LEATHER SHOES", "footwear",
       8.0, 35.0, 0.45, 2500, "CN:.35 VN:.25 IN:.2 ID:.1 BR:.1", "pa", 0.8, pkg=12),
    _c("64041100", "Sports footwear with uppers of textile materials", "SPORTS SHOES", "footwear",
       16.9, 24.0, 0.45, 3000, "VN:.45 CN:.35 ID:.2", "pa", 0.65, pkg=12),
    _c("64041990", "Other footwear with outer soles of rubber and uppers of textile materials", "CANVAS SHOES",
       "footwear", 17.0, 11.0, 0.45, 3000, "CN:.6 VN:.2 BD:.1 IN:.1", "pa", 0.5, pkg=12),
    _c("64069090", "Parts of footwear, other", "SHOE PARTS", "footwear",
       3.0, 8.0, 0.55, 2000, "CN:.6 VN:.25 IN:.15"),
    # --- toys, games, sports (95) ----------------------------------------------------------
    _c("95030075", "Toys of plastics, other", "PLASTIC TOYS", "toys",
       4.7, 8.0, 0.5, 3000, "CN:.85 VN:.1 ID:.05"),
    _c("95030041", "Stuffed toys representing animals or non-human creatures", "SOFT TOYS", "toys",
       4.7, 10.0, 0.45, 2000, "CN:.9 VN:.1"),
    _c("95030010", "Tricycles, scooters, pedal cars and similar wheeled toys", "CHILDREN SCOOTERS", "toys",
       0.0, 6.0, 0.5, 3000, "CN:.9 TW:.1", "p/st", 4.0),
    _c("95045000", "Video game consoles and machines", "GAME CONSOLES", "toys",
       0.0, 60.0, 0.45, 1500, "CN:.7 VN:.2 MY:.1", "p/st", 3.5, pkg=10),
    _c("95051090", "Articles for Christmas festivities, other than of glass", "CHRISTMAS DECORATIONS", "toys",
       2.7, 6.0, 0.5, 3000, "CN:.95 IN:.05"),
    _c("95069990", "Articles and equipment for sports, other", "SPORTS EQUIPMENT", "toys",
       2.7, 9.0, 0.5, 2500, "CN:.6 TW:.2 VN:.1 PK:.1"),
    # --- electronics (84, 85, 90) ---------------------------------------------------------
    _c("85171300", "Smartphones", "MOBILE PHONES", "electronics",
       0.0, 750.0, 0.5, 400, "CN:.65 VN:.2 IN:.15", "p/st", 0.2, pkg=8),
    _c("84713000", "Portable automatic data-processing machines, weighing not more than 10 kg", "LAPTOPS",
       "electronics", 0.0, 280.0, 0.45, 800, "CN:.8 TW:.1 VN:.1", "p/st", 2.3, pkg=10),
    _c("85285210", "Monitors of a kind used with automatic data-processing machines", "COMPUTER MONITORS",
       "electronics", 0.0, 30.0, 0.4, 3000, "CN:.65 VN:.15 MY:.1 KR:.1", "p/st", 5.5),
    _c("85287219", "Reception apparatus for television, colour, with screen, other", "LED TELEVISIONS",
       "electronics", 14.0, 25.0, 0.4, 4000, "CN:.5 TR:.25 VN:.15 KR:.1", "p/st", 14.0),
    _c("85414300", "Photovoltaic cells assembled in modules or made up into panels", "SOLAR PANELS",
       "electronics", 0.0, 2.2, 0.35, 18000, "CN:.85 VN:.06 MY:.05 TH:.04", "p/st", 22.0, "CN:47.6",
       pack=1.1, pkg=700),
    _c("85044090", "Static converters, other", "POWER SUPPLIES", "electronics",
       2.7, 30.0, 0.5, 1500, "CN:.85 VN:.1 TW:.05", "p/st", 0.3),
    _c("85444290", "Electric conductors fitted with connectors, other", "CABLES", "electronics",
       3.3, 12.0, 0.5, 2500, "CN:.75 VN:.1 TR:.1 CH:.05"),
    _c("85395200", "LED lamps", "LED BULBS", "electronics",
       2.7, 15.0, 0.5, 1200, "CN:.95 VN:.05", "p/st", 0.06),
    _c("85163100", "Hair dryers", "HAIR DRYERS", "electronics",
       2.7, 15.0, 0.4, 1500, "CN:.95 TR:.05", "p/st", 0.6),
    _c("85076000", "Lithium-ion accumulators", "LITHIUM BATTERIES", "electronics",
       2.7, 18.0, 0.5, 3000, "CN:.7 KR:.15 JP:.15"),
    _c("85183095", "Headphones and earphones, other", "HEADPHONES", "electronics",
       2.0, 60.0, 0.5, 500, "CN:.8 VN:.2", "p/st", 0.25, pkg=8),
    _c("85176200", "Machines for the reception, conversion and transmission of data", "NETWORK EQUIPMENT",
       "electronics", 0.0, 80.0, 0.5, 800, "CN:.6 VN:.2 TW:.1 MY:.1", "p/st", 0.6, pkg=10),
    _c("84151090", "Air conditioning machines, split systems", "AIR CONDITIONERS", "electronics",
       2.7, 8.0, 0.4, 6000, "CN:.7 TH:.2 MY:.1", "p/st", 35.0, pkg=40),
    _c("90041091", "Sunglasses with lenses of plastics", "SUNGLASSES", "electronics",
       2.9, 70.0, 0.55, 300, "CN:.9 TW:.1", "p/st", 0.05, pkg=8),
    # --- cycles, cars, tyres (87, 40) -------------------------------------------------------
    _c("87120030", "Bicycles, not motorised, with ball bearings", "BICYCLES", "vehicles",
       14.0, 9.0, 0.45, 4000, "CN:.45 TW:.2 KH:.15 VN:.1 BD:.1", "p/st", 15.0, "CN:48.5", pkg=20),
    _c("87116010", "Cycles with pedal assistance, with an auxiliary electric motor not exceeding 250 W", "E-BIKES",
       "vehicles", 6.0, 32.0, 0.4, 3500, "CN:.65 TW:.25 VN:.1", "p/st", 23.0, "CN:70.1", pkg=30),
    _c("87038010", "Vehicles with only electric motor for propulsion, new", "ELECTRIC CARS", "vehicles",
       10.0, 16.0, 0.3, 20000, "CN:.5 KR:.2 US:.15 JP:.15", "p/st", 1900.0, "CN:20.7", pack=1.0, pkg=1900),
    _c("87032319", "Motor cars, spark-ignition, cylinder capacity 1500-3000 cm3, new", "PASSENGER CARS",
       "vehicles", 10.0, 13.0, 0.3, 20000, "JP:.3 KR:.2 TR:.2 MA:.2 US:.1", "p/st", 1400.0, pack=1.0, pkg=1400),
    _c("40111000", "New pneumatic tyres of rubber, of a kind used on motor cars", "CAR TYRES", "vehicles",
       4.5, 5.0, 0.35, 9000, "CN:.35 KR:.15 TH:.15 JP:.1 TR:.15 IN:.1", "p/st", 9.0, pack=1.02, pkg=9),
    _c("40112090", "New pneumatic tyres for buses or lorries, load index exceeding 121", "TRUCK TYRES", "vehicles",
       4.5, 3.3, 0.3, 12000, "CN:.55 TH:.2 TR:.15 IN:.1", "p/st", 55.0, "CN:35.0", pack=1.02, pkg=55),
    # --- iron and steel (72, 73) -------------------------------------------------------------
    _c("72085120", "Flat-rolled products of iron or non-alloy steel, hot-rolled, of a thickness exceeding 10 mm",
       "HOT ROLLED STEEL PLATES", "steel", 0.0, 0.65, 0.3, 25000, "CN:.25 IN:.2 TR:.2 KR:.15 VN:.1 TW:.1",
       extra="CN:35.9", pack=1.01, pkg=2500),
    _c("72104900", "Flat-rolled products of iron or non-alloy steel, otherwise plated or coated with zinc",
       "GALVANISED STEEL COILS", "steel", 0.0, 0.85, 0.3, 25000, "CN:.3 IN:.25 KR:.2 TW:.15 VN:.1",
       extra="CN:27.9", pack=1.01, pkg=8000),
    _c("73063077", "Welded tubes and pipes of iron or non-alloy steel, other", "STEEL TUBES", "steel",
       0.0, 1.1, 0.35, 20000, "CN:.35 TR:.3 IN:.2 KR:.15", extra="CN:90.6", pack=1.02, pkg=2000),
    _c("73181595", "Screws and bolts of iron or steel, other", "SCREWS AND BOLTS", "steel",
       3.7, 2.2, 0.4, 15000, "CN:.45 TW:.3 VN:.1 IN:.1 MY:.05", extra="CN:86.5", pkg=900),
    _c("73239300", "Table, kitchen or other household articles of stainless steel", "STAINLESS STEEL KITCHENWARE",
       "steel", 3.2, 7.0, 0.45, 5000, "CN:.7 IN:.2 TR:.1"),
    _c("73269098", "Other articles of iron or steel, other", "STEEL ARTICLES", "steel",
       2.7, 3.5, 0.55, 8000, "CN:.5 TR:.2 IN:.2 GB:.1", pkg=500),
    # --- aluminium (76) ------------------------------------------------------------------------
    _c("76042990", "Profiles of aluminium alloys, other", "ALUMINIUM PROFILES", "aluminium",
       7.5, 4.2, 0.35, 18000, "CN:.4 TR:.3 AE:.15 VN:.15", extra="CN:32.1", pack=1.03, pkg=1000),
    _c("76061299", "Plates, sheets and strip of aluminium alloys, rectangular, other", "ALUMINIUM SHEETS",
       "aluminium", 7.5, 3.6, 0.3, 20000, "CN:.35 TR:.25 KR:.15 AE:.15 IN:.1", extra="CN:24.6", pack=1.03,
       pkg=2000),
    _c("76071119", "Aluminium foil, not backed, rolled, of a thickness of less than 0.021 mm", "ALUMINIUM FOIL",
       "aluminium", 7.5, 4.5, 0.3, 15000, "CN:.5 TR:.3 TH:.1 IN:.1", extra="CN:28.5", pkg=500),
    _c("76151010", "Table, kitchen or other household articles of cast aluminium", "ALUMINIUM COOKWARE",
       "aluminium", 6.0, 6.0, 0.45, 4000, "CN:.7 TR:.2 IN:.1"),
    # --- ceramics (69) ------------------------------------------------------------------------
    _c("69111000", "Tableware and kitchenware of porcelain or china", "PORCELAIN TABLEWARE", "ceramics",
       12.0, 2.6, 0.45, 9000, "CN:.7 TH:.1 TR:.1 BD:.1", extra="CN:36.1", pack=1.25),
    _c("69149000", "Other ceramic articles, other than of porcelain or china", "CERAMIC ARTICLES", "ceramics",
       5.0, 2.0, 0.5, 6000, "CN:.6 IN:.2 TR:.2", pack=1.25),
    _c("69072100", "Ceramic flags and paving, hearth or wall tiles, water absorption not exceeding 0.5 %",
       "CERAMIC TILES", "ceramics", 5.0, 0.5, 0.35, 24000, "IN:.35 CN:.2 TR:.2 EG:.15 AE:.1", "m2", 22.0,
       "CN:69.7", pack=1.08, pkg=1000),
    # --- food (03, 07, 08, 09, 16, 18) ---------------------------------------------------------
    _c("07032000", "Garlic, fresh or chilled", "FRESH GARLIC", "food",
       9.6, 1.2, 0.35, 24000, "CN:.55 AR:.25 EG:.12 TR:.08", extra="CN:100.0", pack=1.05, pkg=10),
    _c("07031019", "Onions, fresh or chilled, other than sets", "FRESH ONIONS", "food",
       9.6, 0.45, 0.35, 24000, "EG:.35 NZ:.2 AR:.15 CL:.15 ZA:.15", pack=1.05, pkg=25),
    _c("03061792", "Frozen shrimps and prawns of the genus Penaeus", "FROZEN SHRIMPS", "food",
       12.0, 7.5, 0.35, 20000, "EC:.35 VN:.25 IN:.25 TH:.15", pack=1.1, pkg=20),
    _c("08039010", "Bananas, fresh", "FRESH BANANAS", "food",
       9.4, 0.8, 0.3, 20000, "EC:.3 CO:.25 CI:.2 CM:.15 CR:.1", pack=1.08, pkg=18),
    _c("09011100", "Coffee, not roasted, not decaffeinated", "GREEN COFFEE BEANS", "food",
       0.0, 4.2, 0.35, 19200, "BR:.4 VN:.25 CO:.15 ET:.1 UG:.1", pack=1.01, pkg=60),
    _c("18010000", "Cocoa beans, whole or broken, raw or roasted", "COCOA BEANS", "food",
       0.0, 6.0, 0.3, 24000, "CI:.55 GH:.25 EC:.2", pack=1.01, pkg=64),
    _c("16041411", "Tunas, prepared or preserved, in vegetable oil", "CANNED TUNA", "food",
       24.0, 5.5, 0.35, 18000, "EC:.35 TH:.25 PH:.15 CI:.15 MU:.1", pack=1.2, pkg=12),
    # --- furniture (94): also the usual cover loads ---------------------------------------------------
    _c("94036010", "Wooden furniture of a kind used in the dining room and living room", "WOODEN FURNITURE",
       "furniture", 0.0, 3.0, 0.45, 6000, "CN:.5 VN:.3 MY:.1 ID:.1", pack=1.3, pkg=30),
    _c("94035000", "Wooden furniture of a kind used in the bedroom", "BEDROOM FURNITURE", "furniture",
       0.0, 2.8, 0.45, 7000, "CN:.4 VN:.4 MY:.1 ID:.1", pack=1.3, pkg=35),
    _c("94016100", "Upholstered seats with wooden frames", "UPHOLSTERED SOFAS", "furniture",
       0.0, 5.5, 0.45, 5000, "CN:.55 VN:.2 TR:.15 GB:.1", "p/st", 30.0, pack=1.25, pkg=35),
    # --- chemicals and plastics (29, 31, 39) ------------------------------------------------------
    _c("29181400", "Citric acid", "CITRIC ACID", "chemicals",
       6.5, 0.9, 0.3, 20000, "CN:.8 TH:.1 MY:.1", extra="CN:42.7", pack=1.02, pkg=1000),
    _c("31021010", "Urea containing more than 45 % by weight of nitrogen", "UREA FERTILISER", "chemicals",
       6.5, 0.38, 0.3, 30000, "EG:.4 DZ:.25 QA:.2 OM:.15", pack=1.0, pkg=0),
    _c("39269097", "Other articles of plastics, other", "PLASTIC ARTICLES", "chemicals",
       6.5, 5.0, 0.55, 5000, "CN:.6 VN:.1 TR:.1 IN:.1 GB:.1"),
    _c("39241000", "Tableware and kitchenware of plastics", "PLASTIC KITCHENWARE", "chemicals",
       6.5, 4.0, 0.45, 4000, "CN:.85 TR:.1 VN:.05"),
    # --- miscellaneous consumer goods and pharmaceuticals ----------------------------------------------
    _c("33049900", "Beauty or make-up preparations, other", "COSMETICS", "misc",
       0.0, 18.0, 0.5, 2000, "KR:.3 US:.2 CN:.2 GB:.2 CH:.1", pkg=10),
    _c("71171900", "Imitation jewellery of base metal, other", "FASHION JEWELLERY", "misc",
       4.0, 40.0, 0.55, 300, "CN:.8 IN:.2", pkg=8),
    _c("82055980", "Hand tools, other", "HAND TOOLS", "misc",
       2.7, 4.5, 0.45, 6000, "CN:.55 TW:.25 IN:.1 GB:.05 CH:.05"),
    _c("30049000", "Medicaments put up in measured doses, other", "PHARMACEUTICAL PRODUCTS", "misc",
       0.0, 90.0, 0.55, 800, "IN:.3 US:.3 CH:.3 GB:.1", pkg=10),
    _c("96032100", "Toothbrushes", "TOOTHBRUSHES", "misc",
       3.7, 20.0, 0.4, 1000, "CN:.85 IN:.15", "p/st", 0.02),
    _c("40151900", "Gloves of vulcanised rubber, other than surgical", "RUBBER GLOVES", "misc",
       2.7, 4.0, 0.35, 10000, "MY:.6 TH:.25 CN:.15"),
    # --- excise goods (22, 24, 27) ----------------------------------------------------------------
    _c("22030001", "Beer made from malt, in containers holding 10 litres or less", "BEER", "beer",
       0.0, 1.25, 0.35, 22000, "MX:.3 GB:.25 US:.1 CN:.1 JP:.1 TH:.05 CH:.1", "l", 1.01,
       pack=1.45, pkg=12, excise="beer", density=1.01),
    _c("22042198", "Other wine of fresh grapes, in containers holding 2 litres or less", "WINE", "wine",
       3.5, 4.5, 0.55, 9000, "CL:.2 AR:.15 ZA:.15 AU:.15 US:.15 NZ:.1 GE:.1", "l", 0.99,
       pack=1.6, pkg=14, excise="wine", density=0.99),
    _c("22083030", "Single malt whisky", "WHISKY", "spirits",
       0.0, 18.0, 0.6, 8000, "GB:.7 US:.1 JP:.1 IN:.1", "l alc. 100 %", None,
       pack=1.6, pkg=12, excise="spirits", density=0.95),
    _c("22086011", "Vodka of an alcoholic strength of 45.4 % vol or less, in containers of 2 litres or less",
       "VODKA", "spirits", 0.0, 5.0, 0.45, 9000, "GB:.35 US:.3 UA:.35", "l alc. 100 %", None,
       pack=1.6, pkg=12, excise="spirits", density=0.95),
    _c("22084031", "Rum in containers of 2 litres or less, of a value exceeding 7.9 EUR per litre of pure alcohol",
       "RUM", "spirits", 0.0, 8.0, 0.5, 8000, "DO:.25 JM:.25 BB:.2 CU:.15 MU:.15", "l alc. 100 %", None,
       pack=1.6, pkg=12, excise="spirits", density=0.95),
    _c("24022090", "Cigarettes containing tobacco, other than containing cloves", "CIGARETTES", "tobacco",
       57.6, 28.0, 0.35, 3000, "CH:.35 TR:.2 GB:.15 AE:.15 US:.15", "1000 p/st", 1.0,
       pack=1.2, pkg=12, excise="cigarettes"),
    _c("24031990", "Smoking tobacco, other than in packings of 500 g or less", "SMOKING TOBACCO", "tobacco",
       74.9, 35.0, 0.4, 2000, "CH:.3 TR:.3 US:.2 GB:.2", pack=1.15, pkg=12, excise="fine_cut_tobacco"),
    _c("27101245", "Motor spirit (petrol), unleaded, RON 95 or more but less than 98, other", "GASOLINE",
       "fuel", 4.7, 0.78, 0.3, 2_000_000, "US:.35 IN:.2 SA:.2 NO:.15 GB:.1", pack=1.0, pkg=0,
       excise="petrol", density=0.745),
    _c("27101943", "Gas oils with a sulphur content not exceeding 10 mg/kg", "GASOIL", "fuel",
       3.5, 0.72, 0.3, 3_000_000, "SA:.3 IN:.25 US:.2 AE:.1 GB:.1 NO:.05", pack=1.0, pkg=0,
       excise="diesel", density=0.835),
)
# fmt: on

BY_CN: dict[str, Commodity] = {c.cn: c for c in COMMODITIES}
SECTORS: dict[str, tuple[Commodity, ...]] = {}
for _com in COMMODITIES:
    SECTORS.setdefault(_com.sector, ())
    SECTORS[_com.sector] = (*SECTORS[_com.sector], _com)

EXCISE_SECTORS = ("beer", "wine", "spirits", "tobacco", "fuel")
ECOMMERCE_CODES: tuple[Commodity, ...] = tuple(
    BY_CN[cn]
    for cn in (
        "61091000", "61102099", "62044200", "42022290", "64029998", "64041100", "95030075", "95030041",
        "85183095", "85171300", "85395200", "90041091", "71171900", "33049900", "96032100", "85444290",
    )
)  # fmt: skip
"""What e-commerce platforms ship by post or express: light consumer goods."""

MISCLASSIFICATION_PAIRS: tuple[tuple[str, str], ...] = (
    ("85287219", "85285210"),  # televisions (14 %) declared as computer monitors (0 %)
    ("64041990", "64069090"),  # finished textile shoes (17 %) declared as shoe parts (3 %)
    ("61091000", "63079098"),  # T-shirts (12 %) declared as other made-up textile articles (6.3 %)
    ("87120030", "95030010"),  # bicycles (14 % + anti-dumping on CN) declared as wheeled toys (0 %)
    ("07032000", "07031019"),  # garlic (9.6 % + 1,200 EUR/t specific) declared as onions (9.6 %)
    ("73181595", "73269098"),  # screws (3.7 % + anti-dumping on CN) declared as other steel articles (2.7 %)
    ("69111000", "69149000"),  # porcelain tableware (12 % + anti-dumping on CN) declared as other ceramics (5 %)
)
"""(true code, lower-duty code declared instead)."""

TRANSSHIPMENT_COUNTRIES: tuple[str, ...] = ("MY", "VN", "TH", "KH", "ID", "LK", "TW", "IN")
"""Claimed origins for Chinese goods routed through a third country to dodge trade defence."""

COVER_CODES: tuple[str, ...] = ("94036010", "94035000", "94016100", "69072100")
"""Declared goods that typically hide cigarettes (cover loads): furniture, tiles."""

VAGUE_DESCRIPTIONS: tuple[str, ...] = (
    "PARTS", "GIFTS", "FAK", "SAMPLES", "GENERAL CARGO", "SPARE PARTS", "ACCESSORIES",
    "CONSOLIDATED CARGO", "PERSONAL EFFECTS", "GOODS", "MERCHANDISE",
)  # fmt: skip
"""ENS descriptions too vague to risk-assess (FAK = freight all kinds)."""


# --- excise ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExciseRate:
    """French-like excise rate (2025, rounded). ``amount`` is in EUR per ``per`` of the base.

    Bases: ``hl_pure_alcohol`` (hl x strength/100), ``hl_degree`` (hl x % vol), ``hl`` (volume),
    ``1000_litres`` (fuel at 15 degC), ``kg`` (smoking tobacco), ``stick`` (cigarettes).
    """

    product: str
    base: str
    amount: float


EXCISE_RATES: dict[str, ExciseRate] = {
    "spirits": ExciseRate("spirits", "hl_pure_alcohol", 1800.0),
    "beer": ExciseRate("beer", "hl_degree", 7.5),
    "wine": ExciseRate("wine", "hl", 4.10),
    "intermediate": ExciseRate("intermediate", "hl", 200.0),
    # 70 EUR per 1,000 sticks + 55 % of a retail price fixed at 0.60 EUR/stick (12 EUR a pack of 20).
    "cigarettes": ExciseRate("cigarettes", "stick", 0.070 + 0.55 * 0.60),
    "fine_cut_tobacco": ExciseRate("fine_cut_tobacco", "kg", 300.0),
    "petrol": ExciseRate("petrol", "1000_litres", 683.0),
    "diesel": ExciseRate("diesel", "1000_litres", 594.0),
}

CIGARETTE_KG_PER_STICK = 0.001
"""Net mass of one cigarette with its share of the pack (1 kg per 1,000 sticks)."""

ALCOHOL_STRENGTHS: dict[str, tuple[float, ...]] = {
    "22030001": (4.6, 5.0, 5.2, 6.0, 7.5, 8.0),
    "22042198": (11.5, 12.0, 12.5, 13.0, 13.5, 14.5),
    "22083030": (40.0, 43.0, 46.0),
    "22086011": (37.5, 40.0),
    "22084031": (37.5, 40.0, 43.0),
}
"""Typical alcoholic strengths (% vol) by code."""

DENSITY_RANGES: dict[str, tuple[float, float]] = {"petrol": (0.720, 0.775), "diesel": (0.820, 0.845)}
"""Density at 15 degC in kg/l allowed by the fuel specifications (EN 228, EN 590)."""


def excise_base(
    product: str,
    volume_litres: float | None = None,
    strength_pct: float | None = None,
    mass_kg: float | None = None,
    sticks: int | None = None,
) -> float:
    """Quantity the excise rate of ``product`` applies to, in the unit of :class:`ExciseRate`."""
    base = EXCISE_RATES[product].base
    if base == "hl_pure_alcohol":
        return (volume_litres or 0.0) / 100.0 * (strength_pct or 0.0) / 100.0
    if base == "hl_degree":
        return (volume_litres or 0.0) / 100.0 * (strength_pct or 0.0)
    if base == "hl":
        return (volume_litres or 0.0) / 100.0
    if base == "1000_litres":
        return (volume_litres or 0.0) / 1000.0
    if base == "kg":
        return mass_kg or 0.0
    return float(sticks or 0)


def excise_duty(
    product: str,
    volume_litres: float | None = None,
    strength_pct: float | None = None,
    mass_kg: float | None = None,
    sticks: int | None = None,
) -> float:
    """Excise in EUR: rate x base for ``product``."""
    return EXCISE_RATES[product].amount * excise_base(product, volume_litres, strength_pct, mass_kg, sticks)


# --- countries, regions, places ----------------------------------------------------------------
@dataclass(frozen=True)
class Region:
    """Shipping region as seen from France.

    ``voyage_days``: sea transit to a French port (min, max) in days. ``modes``: share of
    consignments by transport mode. ``sea_hubs`` / ``air_hubs``: (country, probability) of
    a transit country appearing in the ENS countries of routing.
    """

    name: str
    voyage_days: tuple[float, float]
    modes: tuple[tuple[str, float], ...]
    sea_hubs: tuple[tuple[str, float], ...] = ()
    air_hubs: tuple[tuple[str, float], ...] = ()


REGIONS: dict[str, Region] = {
    "far_east": Region("far_east", (20, 35), _pairs("sea:.72 air:.28"), _pairs("SG:.5 LK:.2 EG:.45 MA:.15"),
                       _pairs("AE:.2 QA:.15")),
    "south_asia": Region("south_asia", (16, 26), _pairs("sea:.75 air:.25"), _pairs("LK:.3 EG:.45 MA:.1"),
                         _pairs("AE:.3")),
    "middle_east": Region("middle_east", (12, 20), _pairs("sea:.8 air:.2"), _pairs("EG:.6")),
    "med": Region("med", (2, 6), _pairs("sea:.85 air:.15"), _pairs("MT:.1")),
    "uk": Region("uk", (1, 2), _pairs("road:.6 sea:.2 air:.1 rail:.1")),
    "ch": Region("ch", (2, 4), _pairs("road:.75 rail:.15 air:.1")),
    "nordic": Region("nordic", (2, 4), _pairs("sea:.8 air:.2")),
    "black_sea": Region("black_sea", (6, 11), _pairs("sea:.7 air:.3"), _pairs("TR:.9")),
    "north_am": Region("north_am", (9, 16), _pairs("sea:.7 air:.3")),
    "latam": Region("latam", (14, 30), _pairs("sea:.85 air:.15"), _pairs("PA:.2"), _pairs("US:.1")),
    "africa": Region("africa", (9, 22), _pairs("sea:.85 air:.15"), _pairs("MA:.2")),
    "oceania": Region("oceania", (35, 45), _pairs("sea:.85 air:.15"), _pairs("SG:.5 EG:.3"), _pairs("SG:.3")),
}  # fmt: skip

COUNTRY_REGION: dict[str, str] = {
    **dict.fromkeys(("CN", "HK", "TW", "KR", "JP", "VN", "TH", "MY", "ID", "KH", "PH", "SG"), "far_east"),
    **dict.fromkeys(("IN", "PK", "BD", "LK"), "south_asia"),
    **dict.fromkeys(("AE", "SA", "QA", "OM"), "middle_east"),
    **dict.fromkeys(("TR", "EG", "MA", "TN", "DZ", "IL"), "med"),
    "GB": "uk",
    "CH": "ch",
    "NO": "nordic",
    **dict.fromkeys(("UA", "GE"), "black_sea"),
    **dict.fromkeys(("US", "CA", "MX"), "north_am"),
    **dict.fromkeys(("BR", "AR", "CL", "EC", "CO", "CR", "DO", "JM", "BB", "CU", "GY"), "latam"),
    **dict.fromkeys(("CI", "GH", "CM", "ET", "UG", "ZA", "MU"), "africa"),
    **dict.fromkeys(("AU", "NZ"), "oceania"),
}

# UN/LOCODEs of places of loading. Air uses the city location (UN/LOCODE has no airport codes).
# Landlocked countries ship by sea through a neighbour's port (ET via Djibouti, UG via Mombasa).
LOADING_PLACES: dict[str, dict[str, tuple[str, ...]]] = {
    "CN": {"sea": ("CNSHA", "CNNGB", "CNYTN", "CNSZX", "CNTAO", "CNXMN"), "air": ("CNSHA", "CNCAN", "CNSZX", "CNBJS")},
    "HK": {"sea": ("HKHKG",), "air": ("HKHKG",)},
    "TW": {"sea": ("TWKHH", "TWKEL"), "air": ("TWTPE",)},
    "KR": {"sea": ("KRPUS", "KRINC"), "air": ("KRSEL",)},
    "JP": {"sea": ("JPYOK", "JPTYO", "JPNGO", "JPOSA"), "air": ("JPTYO", "JPOSA")},
    "VN": {"sea": ("VNSGN", "VNHPH"), "air": ("VNSGN", "VNHAN")},
    "TH": {"sea": ("THLCH",), "air": ("THBKK",)},
    "MY": {"sea": ("MYPKG", "MYTPP"), "air": ("MYKUL",)},
    "ID": {"sea": ("IDJKT", "IDSUB"), "air": ("IDJKT",)},
    "KH": {"sea": ("KHKOS",), "air": ("KHPNH",)},
    "PH": {"sea": ("PHMNL",), "air": ("PHMNL",)},
    "SG": {"sea": ("SGSIN",), "air": ("SGSIN",)},
    "IN": {"sea": ("INNSA", "INMUN", "INMAA"), "air": ("INDEL", "INBOM", "INMAA")},
    "PK": {"sea": ("PKKHI", "PKBQM"), "air": ("PKKHI",)},
    "BD": {"sea": ("BDCGP",), "air": ("BDDAC",)},
    "LK": {"sea": ("LKCMB",), "air": ("LKCMB",)},
    "AE": {"sea": ("AEJEA",), "air": ("AEDXB",)},
    "SA": {"sea": ("SAJED", "SADMM", "SARTA"), "air": ("SARUH",)},
    "QA": {"sea": ("QAMES",), "air": ("QADOH",)},
    "OM": {"sea": ("OMSOH",), "air": ("OMMCT",)},
    "TR": {"sea": ("TRAMR", "TRMER", "TRIZM"), "air": ("TRIST",)},
    "EG": {"sea": ("EGALY", "EGDAM", "EGPSD"), "air": ("EGCAI",)},
    "MA": {"sea": ("MAPTM", "MACAS"), "air": ("MACAS",)},
    "TN": {"sea": ("TNRAD",), "air": ("TNTUN",)},
    "DZ": {"sea": ("DZALG",), "air": ("DZALG",)},
    "IL": {"sea": ("ILHFA", "ILASH"), "air": ("ILTLV",)},
    "GB": {"sea": ("GBFXT", "GBSOU", "GBLGP"), "air": ("GBLON", "GBMNC"), "road": ("GBLON", "GBMNC", "GBBHM"),
           "rail": ("GBLON",)},
    "CH": {"air": ("CHZRH", "CHGVA"), "road": ("CHBSL", "CHGVA", "CHZRH"), "rail": ("CHBSL",)},
    "NO": {"sea": ("NOOSL", "NOMON"), "air": ("NOOSL",)},
    "UA": {"sea": ("UAODS",), "air": ("UAKBP",)},
    "GE": {"sea": ("GEPTI",), "air": ("GETBS",)},
    "US": {"sea": ("USNYC", "USSAV", "USHOU", "USLAX"), "air": ("USNYC", "USCHI", "USLAX")},
    "CA": {"sea": ("CAMTR",), "air": ("CAYTO",)},
    "MX": {"sea": ("MXVER",), "air": ("MXMEX",)},
    "BR": {"sea": ("BRSSZ", "BRRIG"), "air": ("BRSAO",)},
    "AR": {"sea": ("ARBUE",), "air": ("ARBUE",)},
    "CL": {"sea": ("CLSAI", "CLVAP"), "air": ("CLSCL",)},
    "EC": {"sea": ("ECGYE",), "air": ("ECUIO",)},
    "CO": {"sea": ("COCTG", "COSMR"), "air": ("COBOG",)},
    "CR": {"sea": ("CRMOB",), "air": ("CRSJO",)},
    "DO": {"sea": ("DOCAU",), "air": ("DOSDQ",)},
    "JM": {"sea": ("JMKIN",), "air": ("JMKIN",)},
    "BB": {"sea": ("BBBGI",), "air": ("BBBGI",)},
    "CU": {"sea": ("CUHAV",), "air": ("CUHAV",)},
    "GY": {"sea": ("GYGEO",), "air": ("GYGEO",)},
    "CI": {"sea": ("CIABJ", "CISPY"), "air": ("CIABJ",)},
    "GH": {"sea": ("GHTEM",), "air": ("GHACC",)},
    "CM": {"sea": ("CMDLA",), "air": ("CMDLA",)},
    "ET": {"sea": ("DJJIB",), "air": ("ETADD",)},
    "UG": {"sea": ("KEMBA",), "air": ("UGEBB",)},
    "ZA": {"sea": ("ZADUR", "ZACPT"), "air": ("ZAJNB",)},
    "MU": {"sea": ("MUPLU",), "air": ("MUPLU",)},
    "AU": {"sea": ("AUMEL", "AUSYD", "AUADL"), "air": ("AUSYD",)},
    "NZ": {"sea": ("NZAKL", "NZTRG"), "air": ("NZAKL",)},
}  # fmt: skip

CURRENCIES: dict[str, tuple[tuple[str, float], ...]] = {
    "CN": _pairs("USD:.6 CNY:.25 EUR:.15"),
    "HK": _pairs("USD:.7 HKD:.2 EUR:.1"),
    "JP": _pairs("JPY:.5 USD:.3 EUR:.2"),
    "KR": _pairs("USD:.6 KRW:.2 EUR:.2"),
    "GB": _pairs("GBP:.6 EUR:.4"),
    "CH": _pairs("CHF:.5 EUR:.5"),
    "TR": _pairs("EUR:.6 USD:.3 TRY:.1"),
    "IN": _pairs("USD:.7 INR:.1 EUR:.2"),
    "US": _pairs("USD:.9 EUR:.1"),
    "CA": _pairs("CAD:.4 USD:.4 EUR:.2"),
    "AU": _pairs("AUD:.5 USD:.3 EUR:.2"),
    "NZ": _pairs("NZD:.5 USD:.3 EUR:.2"),
    "MA": _pairs("EUR:.9 USD:.1"),
    "TN": _pairs("EUR:.9 USD:.1"),
    "DZ": _pairs("EUR:.8 USD:.2"),
    "ZA": _pairs("ZAR:.3 USD:.3 EUR:.4"),
    "BR": _pairs("USD:.7 BRL:.1 EUR:.2"),
    "NO": _pairs("NOK:.4 EUR:.4 USD:.2"),
}
"""Invoice currencies by country of dispatch; other countries invoice in USD (60 %) or EUR."""
DEFAULT_CURRENCIES = _pairs("USD:.6 EUR:.4")

EUR_PER_UNIT: dict[str, float] = {
    "EUR": 1.0, "USD": 0.92, "CNY": 0.127, "HKD": 0.118, "JPY": 0.0061, "KRW": 0.00068, "GBP": 1.17,
    "CHF": 1.05, "TRY": 0.026, "INR": 0.011, "CAD": 0.68, "AUD": 0.60, "NZD": 0.55, "ZAR": 0.050,
    "BRL": 0.17, "NOK": 0.086,
}  # fmt: skip
"""Fixed exchange table: EUR for one unit of the currency."""

PREFERENCE_CLAIM: dict[str, float] = {
    "GB": 0.9, "CH": 0.8, "TR": 0.9, "MA": 0.9, "TN": 0.9, "EG": 0.8, "IL": 0.8, "DZ": 0.6, "KR": 0.8,
    "JP": 0.7, "VN": 0.6, "SG": 0.7, "MX": 0.7, "CL": 0.8, "CO": 0.8, "EC": 0.8, "CR": 0.7, "CA": 0.7,
    "ZA": 0.8, "BD": 0.9, "KH": 0.9, "PK": 0.8, "LK": 0.8, "PH": 0.7, "NZ": 0.6, "UA": 0.8, "GE": 0.8,
    "MU": 0.8, "CI": 0.8, "GH": 0.8, "CM": 0.8, "DO": 0.8, "JM": 0.8, "BB": 0.8, "GY": 0.8, "NO": 0.6,
}  # fmt: skip
"""Probability that goods of this origin are declared with a tariff preference (code 300):
free-trade agreements, customs union (TR), EBA/GSP+. A preference brings the conventional
duty to 0; trade-defence duties stay."""


# --- customs offices, carriers -------------------------------------------------------------------
@dataclass(frozen=True)
class Office:
    """A French customs office. Codes are illustrative (the format is real: FR + 6 characters)."""

    code: str
    name: str
    modes: tuple[str, ...]


OFFICES: dict[str, Office] = {o.code: o for o in (
    Office("FR000690", "Le Havre port", ("sea",)),
    Office("FR001290", "Marseille-Fos port", ("sea",)),
    Office("FR002100", "Dunkerque port", ("sea",)),
    Office("FR004400", "Montoir-de-Bretagne / Saint-Nazaire port", ("sea",)),
    Office("FR003300", "Roissy-Charles-de-Gaulle fret", ("air",)),
    Office("FR003310", "Roissy-Charles-de-Gaulle postal and express hub", ("postal", "air")),
    Office("FR006930", "Lyon Saint-Exupery airport", ("air",)),
    Office("FR006800", "Saint-Louis / EuroAirport Bale-Mulhouse", ("road", "rail", "air")),
    Office("FR007400", "Saint-Julien-en-Genevois / Bardonnex", ("road",)),
    Office("FR006220", "Calais port and Channel Tunnel (road)", ("road",)),
    Office("FR006240", "Calais-Frethun rail terminal", ("rail",)),
    Office("FR007500", "Paris-Gennevilliers inland clearance", ()),
    Office("FR006910", "Lyon inland clearance", ()),
)}  # fmt: skip
INLAND_OFFICES = ("FR007500", "FR006910")

ENTRY_OFFICES: dict[tuple[str, str], tuple[tuple[str, float], ...]] = {
    ("sea", "far_east"): _pairs("FR000690:.55 FR001290:.35 FR002100:.1"),
    ("sea", "south_asia"): _pairs("FR000690:.5 FR001290:.45 FR002100:.05"),
    ("sea", "middle_east"): _pairs("FR001290:.6 FR000690:.3 FR002100:.1"),
    ("sea", "med"): _pairs("FR001290:.85 FR000690:.15"),
    ("sea", "black_sea"): _pairs("FR001290:.9 FR000690:.1"),
    ("sea", "uk"): _pairs("FR002100:.5 FR000690:.5"),
    ("sea", "nordic"): _pairs("FR002100:.6 FR000690:.4"),
    ("sea", "ch"): _pairs("FR000690:.6 FR002100:.4"),
    ("sea", "*"): _pairs("FR000690:.55 FR001290:.2 FR002100:.1 FR004400:.15"),
    ("air", "ch"): _pairs("FR006800:.8 FR003300:.2"),
    ("air", "*"): _pairs("FR003300:.75 FR003310:.05 FR006930:.12 FR006800:.08"),
    ("postal", "*"): _pairs("FR003310:1"),
    ("road", "uk"): _pairs("FR006220:1"),
    ("road", "ch"): _pairs("FR006800:.5 FR007400:.5"),
    ("rail", "uk"): _pairs("FR006240:1"),
    ("rail", "ch"): _pairs("FR006800:1"),
}
"""First office of entry by (mode, region): ``*`` is the fallback for the mode."""


@dataclass(frozen=True)
class Carrier:
    """A fictional carrier: its EORI and the prefix of its transport documents."""

    name: str
    eori: str
    mode: str
    doc_prefix: str


CARRIERS: dict[str, tuple[Carrier, ...]] = {
    "sea": (
        Carrier("Oceanis Container Line", "FR38291045700021", "sea", "OCLU"),
        Carrier("Nordhavn Shipping A/S", "DK27384911", "sea", "NHSU"),
        Carrier("Hanse Ocean Carriers GmbH", "DE4419203877", "sea", "HOCU"),
        Carrier("Lion Gate Maritime NV", "BE0478123366", "sea", "LGMU"),
        Carrier("Jade Star Lines Europe BV", "NL812734590", "sea", "JSLU"),
        Carrier("Mistral Ro-Ro SAS", "FR51203984100034", "sea", "MRRU"),
    ),
    "air": (
        Carrier("Aerofret Cargo", "FR66190238400017", "air", "471"),
        Carrier("Skybridge Cargo BV", "NL855201348", "air", "612"),
        Carrier("Gulf Star Air Cargo", "DE5520193344", "air", "765"),
        Carrier("Silk Wing Airlines Europe", "NL861029337", "air", "889"),
        Carrier("Express Global Integrator", "BE0611283904", "air", "423"),
    ),
    "road": (
        Carrier("Transports Dumont et Fils", "FR42120983300012", "road", "CMR"),
        Carrier("Channel Freight Services", "FR77301288400025", "road", "CMR"),
        Carrier("Alpine Logistik SARL", "FR10938472600018", "road", "CMR"),
        Carrier("Transmanche Express", "BE0722019384", "road", "CMR"),
    ),
    "rail": (
        Carrier("Rail Fret Europe", "FR20391847500011", "rail", "CIM"),
        Carrier("Helvetic Rail Cargo", "DE3301928374", "rail", "CIM"),
    ),
    "postal": (
        Carrier("Poste Nationale (designated postal operator)", "FR35620193800019", "postal", "S10"),
        Carrier("ExpressPost International", "BE0833019283", "postal", "S10"),
    ),
}

MODE_MASS_FACTOR: dict[str, float] = {"sea": 1.0, "rail": 0.7, "road": 0.45, "air": 0.06, "postal": 0.0}
"""Median item mass of a consignment relative to a full sea consignment (postal is drawn apart)."""

MODE_MAX_CONSIGNMENT_KG: dict[str, float] = {"road": 24_000, "rail": 50_000, "air": 8_000, "postal": 30}
"""Net mass caps per consignment: a truck, a rail wagon, a large air shipment, a parcel."""
