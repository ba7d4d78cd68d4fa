"""A synthetic home-and-garden catalog with rule-based graded relevance labels: the project's embedded dataset.

The generator builds a product catalog (about 30 product types, each with its own brands, sizes, colours, materials,
pack sizes and accessories), a set of search queries with modifiers, and query–product pairs labelled by the explicit
rules below. Same config, same records: every random draw comes from one seeded `random.Random`.

Products
    A *main* product has a type (``drill``), a brand, a unique model number (``DCD4821``) and attributes among
    ``size`` (with units), ``colour``, ``material`` and ``quantity`` (pack size), as its type allows. An *accessory*
    is a part or add-on made for one host type (``Drill Bit Set for Cordless Drill``); its product type is the
    accessory name and it names its host in the title, which is what makes it a hard negative for a lexical matcher.

Queries
    Each query searches one main product type and states zero or more modifiers taken from one anchor product of
    that type (so at least one exact match exists): ``type`` alone, ``brand+type``, ``type+size``, ``colour+type``,
    ``material+type``, ``type+quantity``, ``brand+model``, ``brand+size+type``, ``colour+size+type`` or
    ``brand+colour+type``. Query text is lower-cased and uses loose unit spellings ("50 foot", "52 inch").

Rules (the *fine grade* of a pair; the query searches type T with stated modifiers M)
    1. ``exact``     the product is a main product of type T and agrees with every modifier in M
                     (a query that states no modifier is matched exactly by every product of type T);
    2. ``minor``     type T, every *major* modifier agrees, but a *minor* one (colour, material, quantity) differs;
    3. ``major``     type T, but a *major* modifier (brand, model number, size) differs;
    4. ``accessory`` an accessory or part made for type T ("replacement blade" for a circular-saw query);
    5. ``other``     anything else: another product type, including accessories of other types.
    The worst disagreement decides: a product that differs in brand and colour is ``major``.

Fine grade → scheme label
    ==========  ===========  ==========  ==========  ============
    fine        lref5        esci4       graded3     crowdflower4
    ==========  ===========  ==========  ==========  ============
    exact       Exact        Exact       Exact       4
    minor       Significant  Substitute  Partial     3
    major       Marginal     Substitute  Partial     2
    accessory   Trivial      Complement  Irrelevant  1
    other       Irrelevant   Irrelevant  Irrelevant  1
    ==========  ===========  ==========  ==========  ============
    Any other five-grade scheme maps the fine grades to its labels in order; other schemes need `grade_map`.

Pairs
    Each query gets pairs drawn from four candidate sources (`candidate_mix`): matching products, near misses (same
    type, some modifier differs; a minor miss with probability 0.65 when both kinds exist), accessories of the
    searched type, and random products (`hard_negative_share` of them from other types of the same department). A
    source whose pool is used up is dropped for that query. Products are shared: each appears under many queries.

Traffic
    Queries get a Zipf-like `exposure` (searches per period, rank^-zipf_exponent over a random rank order). Sorted
    by exposure, a query is ``head`` while the traffic of the queries before it is below `head_share` of the total,
    ``torso`` below `head_share + torso_share`, ``tail`` after. Head queries get more pairs
    (∝ share^pair_exposure_power, within [min_pairs_per_query, max_pairs_per_query]).

Label noise
    With probability `label_noise` a pair's label is replaced by a different grade, nearer grades more likely
    (weight 1/distance²). Every record carries ``meta["label_noise"]`` (bool) and ``meta["true_label"]`` (the rule's
    label), so noise-robust selection can be checked against the truth.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from lref.data.records import Record
from lref.data.splits import normalise_query
from lref.labels import LabelScheme, get_scheme

FINE_GRADES = ("exact", "minor", "major", "accessory", "other")
"""Rule outcomes, most relevant first."""

MAJOR_MODIFIERS = ("brand", "model", "size")
MINOR_MODIFIERS = ("colour", "material", "quantity")

PRESET_GRADE_MAPS: dict[str, tuple[int, ...]] = {
    # index into the scheme's labels for each fine grade, in FINE_GRADES order
    "lref5": (0, 1, 2, 3, 4),
    "esci4": (0, 1, 1, 2, 3),
    "graded3": (0, 1, 1, 2, 2),
    "crowdflower4": (0, 1, 2, 3, 3),
}

QUERY_PATTERNS: dict[str, tuple[str, ...]] = {
    "type": (),
    "brand+type": ("brand",),
    "type+size": ("size",),
    "colour+type": ("colour",),
    "material+type": ("material",),
    "type+quantity": ("quantity",),
    "brand+model": ("brand", "model"),
    "brand+size+type": ("brand", "size"),
    "colour+size+type": ("colour", "size"),
    "brand+colour+type": ("brand", "colour"),
}


@dataclass
class SyntheticCatalogConfig:
    """Settings of the synthetic catalog generator."""

    n_pairs: int = field(default=20000, metadata={"help": "Number of query–product pairs (records) to generate."})
    n_products: int | None = field(
        default=None, metadata={"help": "Catalog size, accessories included; None: max(600, n_pairs // 8)."}
    )
    n_queries: int | None = field(
        default=None, metadata={"help": "Number of distinct queries; None: n_pairs // 10 (at least 1)."}
    )
    scheme: str | LabelScheme = field(
        default="graded3", metadata={"help": "Label scheme: a preset name (lref5, esci4, graded3, crowdflower4)."}
    )
    grade_map: tuple[int, ...] | None = field(
        default=None,
        metadata={
            "help": "Scheme label index for each fine grade (exact, minor, major, accessory, other); "
            "None uses the preset's mapping."
        },
    )
    label_noise: float = field(
        default=0.0,
        metadata={"help": "Probability that a pair's label is replaced by another grade (neighbours favoured)."},
    )
    seed: int = field(default=0, metadata={"help": "Random seed; the same config always gives identical records."})
    accessory_share: float = field(
        default=0.3, metadata={"help": "Share of the catalog that is accessories and parts rather than main products."}
    )
    head_share: float = field(
        default=0.2, metadata={"help": "Queries carrying the top this share of cumulative traffic are 'head'."}
    )
    torso_share: float = field(
        default=0.3, metadata={"help": "The next this share of cumulative traffic is 'torso'; the rest is 'tail'."}
    )
    zipf_exponent: float = field(
        default=1.0, metadata={"help": "Exposure of the query of rank r is ∝ r^-zipf_exponent."}
    )
    total_searches: float = field(
        default=1_000_000.0, metadata={"help": "Total traffic spread over the queries; exposure is in these units."}
    )
    min_pairs_per_query: int = field(default=4, metadata={"help": "Fewest pairs any query gets."})
    max_pairs_per_query: int = field(default=60, metadata={"help": "Most pairs any query gets."})
    descriptions: bool = field(
        default=True,
        metadata={"help": "Give every product a description. False: none (shorter prompts; the labels do not depend on "
                  "it, so they are unchanged)."},
    )
    attributes: bool = field(
        default=True,
        metadata={"help": "Give every product its attribute map (model, size, colour, ...). False: none (shorter "
                  "prompts; the title still names them, and the labels are unchanged)."},
    )
    pair_exposure_power: float = field(
        default=0.5, metadata={"help": "Pairs beyond the minimum are shared ∝ traffic share^this (0: evenly)."}
    )
    candidate_mix: dict[str, float] = field(
        default_factory=lambda: {"match": 0.22, "near_miss": 0.36, "accessory": 0.17, "random": 0.25},
        metadata={"help": "Relative weight of each candidate source per pair: match, near_miss, accessory, random."},
    )
    hard_negative_share: float = field(
        default=0.5, metadata={"help": "Share of random candidates drawn from other types of the same department."}
    )
    query_patterns: dict[str, float] = field(
        default_factory=lambda: {
            "type": 0.10,
            "brand+type": 0.15,
            "type+size": 0.12,
            "colour+type": 0.12,
            "material+type": 0.07,
            "type+quantity": 0.05,
            "brand+model": 0.10,
            "brand+size+type": 0.10,
            "colour+size+type": 0.08,
            "brand+colour+type": 0.11,
        },
        metadata={"help": "Relative weight of each query pattern (patterns a type cannot express are skipped)."},
    )

    def resolved(self) -> "SyntheticCatalogConfig":
        """A copy with derived sizes filled in, after checking every setting."""
        if self.n_pairs < 1:
            raise ValueError(f"n_pairs must be at least 1, got {self.n_pairs}")
        n_queries = self.n_queries if self.n_queries is not None else max(1, self.n_pairs // 10)
        n_products = self.n_products if self.n_products is not None else max(600, self.n_pairs // 8)
        if n_queries < 1:
            raise ValueError(f"n_queries must be at least 1, got {n_queries}")
        if n_products < 2 * len(PRODUCT_TYPES):
            raise ValueError(
                f"n_products must be at least {2 * len(PRODUCT_TYPES)} (two per product type), got {n_products}"
            )
        if not 1 <= self.min_pairs_per_query <= self.max_pairs_per_query:
            raise ValueError(
                "need 1 <= min_pairs_per_query <= max_pairs_per_query, "
                f"got {self.min_pairs_per_query} and {self.max_pairs_per_query}"
            )
        if self.n_pairs < n_queries * self.min_pairs_per_query:
            raise ValueError(
                f"n_pairs={self.n_pairs} is too few for {n_queries} queries "
                f"with at least {self.min_pairs_per_query} pairs each; "
                "lower n_queries or min_pairs_per_query"
            )
        if self.n_pairs > n_queries * self.max_pairs_per_query:
            raise ValueError(
                f"n_pairs={self.n_pairs} is too many for {n_queries} queries "
                f"with at most {self.max_pairs_per_query} pairs each; "
                "raise n_queries or max_pairs_per_query"
            )
        for name in ("label_noise", "accessory_share", "hard_negative_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if not 0.0 < self.accessory_share < 1.0:
            raise ValueError(f"accessory_share must be strictly between 0 and 1, got {self.accessory_share}")
        if self.head_share <= 0 or self.torso_share < 0 or self.head_share + self.torso_share >= 1:
            raise ValueError(
                "need head_share > 0, torso_share >= 0 and head_share + torso_share < 1, "
                f"got {self.head_share} and {self.torso_share}"
            )
        unknown = set(self.candidate_mix) - {"match", "near_miss", "accessory", "random"}
        if unknown or any(w < 0 for w in self.candidate_mix.values()) or sum(self.candidate_mix.values()) <= 0:
            raise ValueError(
                "candidate_mix needs non-negative weights for match, near_miss, accessory, random, "
                f"got {self.candidate_mix}"
            )
        unknown = set(self.query_patterns) - set(QUERY_PATTERNS)
        if unknown:
            raise ValueError(f"unknown query patterns {sorted(unknown)} (known: {', '.join(QUERY_PATTERNS)})")
        if any(w < 0 for w in self.query_patterns.values()) or sum(self.query_patterns.values()) <= 0:
            raise ValueError(
                f"query_patterns needs non-negative weights with a positive sum, got {self.query_patterns}"
            )
        grade_map_for(get_scheme(self.scheme), self.grade_map)
        return replace(self, n_queries=n_queries, n_products=n_products)


def grade_map_for(scheme: LabelScheme, grade_map: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Scheme label index for each fine grade, checked to be ordered and to use every label."""
    if grade_map is None:
        preset = PRESET_GRADE_MAPS.get(scheme.name)
        if preset is not None and len(scheme) == max(preset) + 1:
            grade_map = preset
        elif len(scheme) == len(FINE_GRADES):
            grade_map = tuple(range(len(FINE_GRADES)))
        else:
            raise ValueError(
                f"scheme {scheme.name!r} has {len(scheme)} labels; give grade_map (a label index for each of "
                f"{', '.join(FINE_GRADES)}) or use a preset ({', '.join(PRESET_GRADE_MAPS)})"
            )
    grade_map = tuple(int(i) for i in grade_map)
    if len(grade_map) != len(FINE_GRADES):
        raise ValueError(f"grade_map needs {len(FINE_GRADES)} entries ({', '.join(FINE_GRADES)}), got {grade_map}")
    if list(grade_map) != sorted(grade_map) or set(grade_map) != set(range(len(scheme))):
        raise ValueError(
            f"grade_map {grade_map} must be non-decreasing and use every label index "
            f"0..{len(scheme) - 1} of scheme {scheme.name!r}"
        )
    return grade_map


# --------------------------------------------------------------------------------------------------- catalog vocabulary


@dataclass(frozen=True)
class ProductType:
    key: str
    department: str
    names: tuple[str, ...]
    """Listing names, as in titles."""
    queries: tuple[str, ...]
    """How shoppers name the type in a query."""
    brands: tuple[tuple[str, str], ...]
    """(brand, model-number prefix)."""
    sizes: tuple[str, ...] = ()
    colours: tuple[str, ...] = ()
    materials: tuple[str, ...] = ()
    quantities: tuple[str, ...] = ()
    accessories: tuple[str, ...] = ()
    features: tuple[str, ...] = ()


def _brands(text: str) -> tuple[tuple[str, str], ...]:
    return tuple(tuple(item.split(":")) for item in text.split(", "))  # type: ignore[misc]


_TOOL_BRANDS = "DeWalt:DCD, Milwaukee:2801-, Makita:XFD, Ryobi:PCL, Bosch:GSR"
_OUTDOOR_BRANDS = "Greenworks:GW, EGO:LM, Toro:TR, Husqvarna:HU, Craftsman:CMX, Sun Joe:SJ"
_PLUMBING_BRANDS = "Moen:MO, Delta:DL, Kohler:K-, Pfister:PF, Glacier Bay:GB"
_FINISHES = ("Chrome", "Matte Black", "Brushed Nickel", "Oil-Rubbed Bronze", "Stainless Steel")

PRODUCT_TYPES: tuple[ProductType, ...] = (
    ProductType(
        "drill",
        "power tools",
        ("Cordless Drill Driver Kit", "Cordless Drill/Driver", "Brushless Compact Drill"),
        ("cordless drill", "drill", "power drill", "drill driver"),
        _brands(_TOOL_BRANDS),
        sizes=("12V", "18V", "20V MAX"),
        colours=("Yellow", "Red", "Teal", "Blue"),
        accessories=("Drill Bit Set", "Replacement Battery Pack", "Keyless Chuck", "Battery Charger"),
        features=("2-speed transmission", "LED work light", "1/2 in. keyless chuck"),
    ),
    ProductType(
        "circular saw",
        "power tools",
        ("Circular Saw", "Cordless Circular Saw", "Corded Circular Saw"),
        ("circular saw", "skil saw", "cordless circular saw"),
        _brands("DeWalt:DWE, Makita:5007, Skil:CR, Ryobi:P5, Bosch:CS"),
        sizes=("6-1/2 in.", "7-1/4 in."),
        colours=("Yellow", "Teal", "Red", "Blue"),
        accessories=("Replacement Blade", "Rip Fence Guide", "Blade Wrench", "Dust Bag"),
        features=("electric brake", "bevel capacity to 56 degrees", "magnesium shoe"),
    ),
    ProductType(
        "impact driver",
        "power tools",
        ("Impact Driver Kit", "Cordless Impact Driver", "Brushless Impact Driver"),
        ("impact driver", "cordless impact driver", "impact drill"),
        _brands(_TOOL_BRANDS),
        sizes=("12V", "18V", "20V MAX"),
        colours=("Yellow", "Red", "Teal", "Green"),
        accessories=("Impact Bit Set", "Belt Clip", "Replacement Battery Pack"),
        features=("1/4 in. hex chuck", "3-speed settings", "1,800 in.-lbs. of torque"),
    ),
    ProductType(
        "wet dry vacuum",
        "power tools",
        ("Wet/Dry Vacuum", "Shop Vacuum", "Portable Wet Dry Vac"),
        ("shop vac", "wet dry vac", "shop vacuum", "wet dry vacuum"),
        _brands("Shop-Vac:SV, Ridgid:WD, Craftsman:CMXE, Vacmaster:VM"),
        sizes=("5 gal.", "9 gal.", "16 gal."),
        colours=("Red", "Orange", "Yellow", "Gray"),
        accessories=("Cartridge Filter", "Dust Bag 3-Pack", "Extension Wand", "Crevice Tool"),
        features=("blower port", "locking hose", "on-board accessory storage"),
    ),
    ProductType(
        "lawn mower",
        "outdoor power",
        ("Push Lawn Mower", "Self-Propelled Lawn Mower", "Cordless Lawn Mower"),
        ("lawn mower", "push mower", "self propelled mower", "mower"),
        _brands(_OUTDOOR_BRANDS),
        sizes=("20 in.", "21 in.", "30 in."),
        colours=("Green", "Red", "Black", "Orange"),
        accessories=("Mower Blade", "Grass Catcher Bag", "Air Filter", "Spark Plug"),
        features=("3-in-1 mulch, bag and side discharge", "7-position height adjustment", "folding handle"),
    ),
    ProductType(
        "string trimmer",
        "outdoor power",
        ("String Trimmer", "Cordless String Trimmer", "Gas String Trimmer"),
        ("string trimmer", "weed eater", "weed wacker", "line trimmer"),
        _brands(_OUTDOOR_BRANDS),
        sizes=("13 in.", "15 in.", "17 in."),
        colours=("Green", "Black", "Orange", "Red"),
        accessories=("Trimmer Line Spool", "Spool Cap", "Edger Attachment"),
        features=("bump feed head", "telescoping shaft", "variable speed trigger"),
    ),
    ProductType(
        "leaf blower",
        "outdoor power",
        ("Leaf Blower", "Cordless Leaf Blower", "Handheld Leaf Blower"),
        ("leaf blower", "blower", "cordless leaf blower"),
        _brands(_OUTDOOR_BRANDS),
        sizes=("40V", "56V", "25cc"),
        colours=("Green", "Black", "Orange", "Red"),
        accessories=("Gutter Cleaning Kit", "Vacuum Bag", "Blower Nozzle"),
        features=("turbo boost", "variable speed dial", "500 CFM airflow"),
    ),
    ProductType(
        "pressure washer",
        "outdoor power",
        ("Electric Pressure Washer", "Gas Pressure Washer", "Pressure Washer"),
        ("pressure washer", "power washer", "electric pressure washer"),
        _brands("Sun Joe:SPX, Ryobi:RY, Generac:GN, Greenworks:GPW, Karcher:K"),
        sizes=("1800 PSI", "2700 PSI", "3100 PSI"),
        colours=("Yellow", "Green", "Black", "Blue"),
        accessories=("Surface Cleaner", "Spray Nozzle Set", "High Pressure Hose", "Foam Cannon"),
        features=("quick-connect nozzles", "onboard detergent tank", "25 ft. hose"),
    ),
    ProductType(
        "chainsaw",
        "outdoor power",
        ("Chainsaw", "Cordless Chainsaw", "Gas Chainsaw"),
        ("chainsaw", "chain saw", "cordless chainsaw"),
        _brands("Husqvarna:HU, Stihl:MS, Echo:CS, Greenworks:CS, Oregon:CS"),
        sizes=("14 in.", "16 in.", "18 in."),
        colours=("Orange", "Green", "Black", "Red"),
        accessories=("Saw Chain", "Bar and Chain Oil", "Chain Sharpener", "Guide Bar"),
        features=("automatic oiler", "tool-less chain tensioning", "chain brake"),
    ),
    ProductType(
        "hedge trimmer",
        "outdoor power",
        ("Hedge Trimmer", "Cordless Hedge Trimmer", "Electric Hedge Trimmer"),
        ("hedge trimmer", "hedge clippers", "electric hedge trimmer"),
        _brands(_OUTDOOR_BRANDS),
        sizes=("20 in.", "22 in.", "24 in."),
        colours=("Green", "Black", "Orange", "Yellow"),
        accessories=("Blade Cover", "Debris Collector", "Blade Sharpener"),
        features=("dual-action blades", "rotating rear handle", "3/4 in. cutting capacity"),
    ),
    ProductType(
        "garden hose",
        "garden",
        ("Garden Hose", "Heavy Duty Garden Hose", "Lightweight Garden Hose"),
        ("garden hose", "hose", "water hose"),
        _brands("Flexzilla:HFZG, Gilmour:GL, Craftsman:CMXG, Zero-G:ZG, Melnor:ML"),
        sizes=("25 ft.", "50 ft.", "75 ft.", "100 ft."),
        colours=("Green", "Black", "Blue", "Gray"),
        materials=("Rubber", "Vinyl", "Hybrid Polymer"),
        accessories=("Hose Nozzle", "Hose Reel", "Hose Repair Kit", "Hose Splitter"),
        features=("kink resistant", "crush-proof brass fittings", "drinking water safe"),
    ),
    ProductType(
        "wheelbarrow",
        "garden",
        ("Wheelbarrow", "Contractor Wheelbarrow", "Dual-Wheel Wheelbarrow"),
        ("wheelbarrow", "wheel barrow", "garden cart"),
        _brands("True Temper:TT, Jackson:JK, Ames:AM, Gorilla Carts:GOR"),
        sizes=("4 cu. ft.", "6 cu. ft.", "8 cu. ft."),
        colours=("Green", "Red", "Black", "Yellow"),
        materials=("Steel", "Poly"),
        accessories=("Flat-Free Tire", "Replacement Handle", "Wheelbarrow Cover"),
        features=("flat-free tire", "hardwood handles", "reinforced tray"),
    ),
    ProductType(
        "planter",
        "garden",
        ("Round Planter", "Indoor Outdoor Planter", "Decorative Planter Pot"),
        ("planter", "plant pot", "flower pot", "outdoor planter"),
        _brands("Bloem:BL, Southern Patio:SP, Pennington:PN, Mainstays:MS"),
        sizes=("10 in.", "12 in.", "16 in.", "20 in."),
        colours=("White", "Black", "Terracotta", "Gray", "Blue"),
        materials=("Ceramic", "Plastic", "Terracotta", "Resin"),
        quantities=("1-Pack", "2-Pack", "3-Pack"),
        accessories=("Plant Saucer", "Plant Stand", "Potting Mix"),
        features=("drainage hole", "UV resistant", "frost proof"),
    ),
    ProductType(
        "kitchen faucet",
        "plumbing",
        ("Pull-Down Kitchen Faucet", "Single-Handle Kitchen Faucet", "Touchless Kitchen Faucet"),
        ("kitchen faucet", "kitchen sink faucet", "pull down faucet"),
        _brands(_PLUMBING_BRANDS),
        colours=_FINISHES,
        materials=("Brass", "Stainless Steel", "Zinc"),
        accessories=("Faucet Cartridge", "Supply Line", "Deck Plate", "Sprayer Head"),
        features=("magnetic docking spray head", "spot resist finish", "1 or 3 hole installation"),
    ),
    ProductType(
        "bathroom faucet",
        "plumbing",
        ("Bathroom Faucet", "Widespread Bathroom Faucet", "Centerset Bathroom Faucet"),
        ("bathroom faucet", "bathroom sink faucet", "vanity faucet"),
        _brands(_PLUMBING_BRANDS),
        sizes=("4 in. Centerset", "8 in. Widespread", "Single Hole"),
        colours=_FINISHES,
        materials=("Brass", "Zinc"),
        accessories=("Pop-Up Drain", "Faucet Cartridge", "Aerator"),
        features=("WaterSense certified", "ceramic disc valve", "drain assembly included"),
    ),
    ProductType(
        "shower head",
        "plumbing",
        ("Rain Shower Head", "Handheld Shower Head", "Fixed Shower Head"),
        ("shower head", "rain shower head", "handheld shower"),
        _brands("Moen:MO, Delta:DL, Waterpik:WP, Kohler:K-, Speakman:S"),
        sizes=("6 in.", "8 in.", "10 in."),
        colours=_FINISHES,
        accessories=("Shower Arm Extension", "Shower Hose", "Shower Head Holder"),
        features=("5 spray settings", "1.8 GPM", "anti-clog nozzles"),
    ),
    ProductType(
        "toilet",
        "plumbing",
        ("Elongated Toilet", "Two-Piece Toilet", "One-Piece Toilet"),
        ("toilet", "elongated toilet", "toilet two piece"),
        _brands("Kohler:K-, American Standard:AS, TOTO:CST, Glacier Bay:GB"),
        sizes=("1.28 GPF", "1.6 GPF", "0.8 GPF"),
        colours=("White", "Biscuit", "Bone"),
        accessories=("Toilet Seat", "Fill Valve", "Toilet Flapper", "Wax Ring"),
        features=("comfort height", "soft close seat", "powerful flush"),
    ),
    ProductType(
        "water heater",
        "plumbing",
        ("Electric Water Heater", "Gas Tank Water Heater", "Tankless Water Heater"),
        ("water heater", "hot water heater", "tankless water heater"),
        _brands("Rheem:XE, A.O. Smith:AO, Bradford White:RE, Rinnai:V"),
        sizes=("40 gal.", "50 gal.", "80 gal."),
        accessories=("Anode Rod", "Drain Pan", "Expansion Tank", "Heating Element"),
        features=("6-year warranty", "self-cleaning dip tube", "ENERGY STAR"),
    ),
    ProductType(
        "ceiling fan",
        "lighting",
        ("Ceiling Fan with Light", "Indoor Ceiling Fan", "Outdoor Ceiling Fan"),
        ("ceiling fan", "ceiling fan with light", "outdoor ceiling fan"),
        _brands("Hunter:HN, Hampton Bay:AL, Minka-Aire:F, Harbor Breeze:HB"),
        sizes=("44 in.", "52 in.", "60 in."),
        colours=("White", "Matte Black", "Brushed Nickel", "Bronze"),
        accessories=("Light Kit", "Downrod", "Remote Control", "Pull Chain"),
        features=("reversible motor", "LED light kit", "5 reversible blades"),
    ),
    ProductType(
        "light bulb",
        "lighting",
        ("LED Light Bulb", "A19 LED Light Bulb", "Dimmable LED Bulb"),
        ("light bulb", "led bulb", "led light bulbs", "a19 bulb"),
        _brands("Philips:PH, GE:GE, Feit Electric:OM, Cree:CR, Sylvania:SYL"),
        sizes=("40W Equivalent", "60W Equivalent", "100W Equivalent"),
        colours=("Soft White", "Daylight", "Bright White"),
        quantities=("4-Pack", "8-Pack", "16-Pack"),
        accessories=("Dimmer Switch", "Bulb Changer Pole"),
        features=("dimmable", "E26 base", "15-year life"),
    ),
    ProductType(
        "table lamp",
        "lighting",
        ("Table Lamp", "Bedside Table Lamp", "Ceramic Table Lamp"),
        ("table lamp", "bedside lamp", "lamp"),
        _brands("Hampton Bay:HD, Threshold:TH, Globe Electric:GE, Catalina:CL"),
        sizes=("18 in.", "24 in.", "28 in."),
        colours=("White", "Black", "Brass", "Blue"),
        materials=("Ceramic", "Metal", "Glass"),
        quantities=("1-Pack", "2-Pack"),
        accessories=("Lamp Shade", "Lamp Harp", "Lamp Socket"),
        features=("linen shade", "3-way switch", "USB port"),
    ),
    ProductType(
        "extension cord",
        "electrical",
        ("Extension Cord", "Outdoor Extension Cord", "Heavy Duty Extension Cord"),
        ("extension cord", "outdoor extension cord", "power cord"),
        _brands("Woods:WD, Southwire:SW, Husky:HK, Iron Forge:IF"),
        sizes=("6 ft.", "25 ft.", "50 ft.", "100 ft."),
        colours=("Orange", "Black", "White", "Green"),
        accessories=("Cord Reel", "Outlet Cover", "Cord Organizer Strap"),
        features=("16/3 gauge", "lighted end", "weather resistant jacket"),
    ),
    ProductType(
        "smoke detector",
        "electrical",
        ("Smoke Detector", "Smoke and Carbon Monoxide Detector", "Hardwired Smoke Alarm"),
        ("smoke detector", "smoke alarm", "smoke and co detector"),
        _brands("First Alert:SA, Kidde:KD, X-Sense:XS, Google Nest:NP"),
        colours=("White", "Almond"),
        quantities=("1-Pack", "2-Pack", "6-Pack"),
        accessories=("9V Battery", "Mounting Bracket", "Detector Guard Cage"),
        features=("10-year sealed battery", "test and silence button", "interconnectable"),
    ),
    ProductType(
        "thermostat",
        "electrical",
        ("Smart Thermostat", "Programmable Thermostat", "Non-Programmable Thermostat"),
        ("thermostat", "smart thermostat", "programmable thermostat"),
        _brands("Honeywell:TH, Google Nest:T, ecobee:EB, Emerson:1F"),
        colours=("White", "Black", "Stainless Steel"),
        accessories=("Thermostat Wall Plate", "C-Wire Adapter", "Room Sensor"),
        features=("Wi-Fi enabled", "7-day scheduling", "works with voice assistants"),
    ),
    ProductType(
        "interior paint",
        "paint",
        ("Interior Paint and Primer", "Interior Wall Paint", "One-Coat Interior Paint"),
        ("interior paint", "wall paint", "paint", "paint and primer"),
        _brands("Behr:BH, Glidden:GL, Valspar:VS, Sherwin-Williams:SW"),
        sizes=("1 qt.", "1 gal.", "5 gal."),
        colours=("Ultra Pure White", "Agreeable Gray", "Navy Blue", "Sage Green", "Black"),
        materials=("Eggshell", "Satin", "Flat", "Semi-Gloss"),
        accessories=("Paint Roller Kit", "Paint Tray", "Painter's Tape", "Paint Brush Set"),
        features=("one-coat hide", "low VOC", "scrubbable finish"),
    ),
    ProductType(
        "ladder",
        "tools and storage",
        ("Step Ladder", "Extension Ladder", "Multi-Position Ladder"),
        ("ladder", "step ladder", "extension ladder"),
        _brands("Werner:WR, Little Giant:LG, Louisville:LV, Gorilla:GL"),
        sizes=("4 ft.", "6 ft.", "8 ft.", "10 ft."),
        colours=("Orange", "Yellow", "Silver", "Blue"),
        materials=("Aluminum", "Fiberglass"),
        accessories=("Ladder Leveler", "Ladder Tool Tray", "Ladder Stabilizer"),
        features=("300 lb. load capacity", "slip-resistant feet", "pail shelf"),
    ),
    ProductType(
        "tool box",
        "tools and storage",
        ("Tool Box", "Rolling Tool Box", "Portable Tool Box"),
        ("tool box", "toolbox", "rolling tool box"),
        _brands("Husky:HK, Stanley:ST, Craftsman:CMST, Milwaukee:48-22-"),
        sizes=("16 in.", "22 in.", "26 in."),
        colours=("Black", "Red", "Yellow", "Orange"),
        materials=("Plastic", "Steel", "Aluminum"),
        accessories=("Tool Box Organizer Tray", "Drawer Liner", "Tool Box Lock"),
        features=("removable tray", "metal latches", "stackable"),
    ),
    ProductType(
        "door lock",
        "hardware",
        ("Keyed Entry Door Knob", "Smart Lock Deadbolt", "Entry Door Handleset"),
        ("door lock", "deadbolt", "smart lock", "door knob with lock"),
        _brands("Kwikset:KW, Schlage:BE, Defiant:DF, Yale:YRD"),
        colours=("Satin Nickel", "Matte Black", "Venetian Bronze", "Polished Brass"),
        quantities=("1-Pack", "2-Pack"),
        accessories=("Door Strike Plate", "Key Blank", "Lock Cylinder"),
        features=("SmartKey re-key technology", "ANSI grade 2", "fits standard doors"),
    ),
    ProductType(
        "space heater",
        "heating and cooling",
        ("Ceramic Space Heater", "Oil-Filled Radiator Heater", "Tower Space Heater"),
        ("space heater", "electric heater", "portable heater"),
        _brands("Lasko:LK, De'Longhi:EW, Vornado:VH, Dr. Infrared:DR"),
        sizes=("750W", "1500W"),
        colours=("Black", "White", "Gray"),
        accessories=("Heater Filter", "Heater Remote"),
        features=("tip-over protection", "adjustable thermostat", "digital display"),
    ),
    ProductType(
        "dehumidifier",
        "heating and cooling",
        ("Dehumidifier", "Dehumidifier with Pump", "Portable Dehumidifier"),
        ("dehumidifier", "basement dehumidifier", "dehumidifier with pump"),
        _brands("Frigidaire:FF, hOmeLabs:HME, GE:APER, Midea:MAD"),
        sizes=("22 pt.", "35 pt.", "50 pt."),
        colours=("White", "Gray", "Black"),
        accessories=("Drain Hose", "Replacement Filter"),
        features=("continuous drain", "auto shut-off", "washable filter"),
    ),
    ProductType(
        "gas grill",
        "outdoor living",
        ("Propane Gas Grill", "Gas Grill", "Portable Gas Grill"),
        ("gas grill", "propane grill", "bbq grill", "grill"),
        _brands("Weber:WB, Char-Broil:CB, Nexgrill:NX, Traeger:TR"),
        sizes=("2-Burner", "3-Burner", "4-Burner"),
        colours=("Black", "Stainless Steel", "Blue"),
        accessories=("Grill Cover", "Grill Brush", "Propane Tank", "Grill Grates"),
        features=("side burner", "porcelain-coated grates", "built-in thermometer"),
    ),
    ProductType(
        "patio umbrella",
        "outdoor living",
        ("Market Patio Umbrella", "Cantilever Patio Umbrella", "Tilt Patio Umbrella"),
        ("patio umbrella", "outdoor umbrella", "market umbrella"),
        _brands("Hampton Bay:HB, Sunnydaze:SD, Abba Patio:AP, Sunbrella:SB"),
        sizes=("7.5 ft.", "9 ft.", "11 ft."),
        colours=("Navy", "Beige", "Red", "Green", "Gray"),
        materials=("Aluminum", "Steel"),
        accessories=("Umbrella Base", "Umbrella Cover", "Umbrella Lights"),
        features=("crank lift", "push-button tilt", "fade-resistant canopy"),
    ),
)
"""The product types of the catalog; each type's accessories are its `accessory` candidates."""

_ACCESSORY_BRANDS = (("Universal", "UN"), ("ProGrade", "PG"), ("EasyFit", "EF"), ("Everbilt", "EB"))


@dataclass
class Product:
    """One catalog item: a main product of `type`, or an accessory made for `host` (then `type` is its own kind)."""

    id: str
    type: str
    title: str
    brand: str
    model: str
    attributes: dict[str, str]
    description: str = ""
    host: str | None = None
    department: str = ""


@dataclass
class Query:
    """A search for one product type with stated modifiers (brand, model, size, colour, material, quantity)."""

    id: str
    text: str
    type: str
    modifiers: dict[str, str]
    pattern: str = "type"
    exposure: float = 0.0
    band: str = "tail"


def fine_grade(query: Query, product: Product) -> str:
    """Apply the labelling rules of the module docstring: one of FINE_GRADES."""
    if product.host is not None:
        return "accessory" if product.host == query.type else "other"
    if product.type != query.type:
        return "other"
    worst = "exact"
    for key, wanted in query.modifiers.items():
        have = product.brand if key == "brand" else product.model if key == "model" else product.attributes.get(key)
        if have is None or have.lower() != wanted.lower():
            if key in MAJOR_MODIFIERS:
                return "major"
            worst = "minor"
    return worst


def rule_label(
    query: Query, product: Product, scheme: LabelScheme | str, grade_map: tuple[int, ...] | None = None
) -> str:
    """The scheme label the rules give a pair (before any label noise)."""
    scheme = get_scheme(scheme)
    return scheme.labels[grade_map_for(scheme, grade_map)[FINE_GRADES.index(fine_grade(query, product))]]


# --------------------------------------------------------------------------------------------------------- generation


def _model_number(rng: random.Random, prefix: str, used: set[str]) -> str:
    while True:
        digits = rng.randint(100, 9999)
        suffix = rng.choice(("", "", "C2", "B", "K", "-2", "X", "M1", "D1"))
        model = f"{prefix}{digits}{suffix}"
        if model not in used:
            used.add(model)
            return model


def _join(parts: list[str | None], sep: str = " ") -> str:
    return sep.join(p for p in parts if p)


def _main_product(rng: random.Random, index: int, ptype: ProductType, used_models: set[str]) -> Product:
    brand, prefix = rng.choice(ptype.brands)
    model = _model_number(rng, prefix, used_models)
    attributes: dict[str, str] = {}
    for key, values in (
        ("size", ptype.sizes),
        ("colour", ptype.colours),
        ("material", ptype.materials),
        ("quantity", ptype.quantities),
    ):
        if values:
            attributes[key] = rng.choice(values)
    name = rng.choice(ptype.names)
    size, colour, material, quantity = (attributes.get(k) for k in ("size", "colour", "material", "quantity"))
    layout = rng.randrange(3)
    if layout == 0:  # DeWalt 20V MAX Cordless Drill Driver Kit, Yellow, DCD771C2
        title = _join([_join([brand, size, material, name]), colour, quantity, model], ", ")
    elif layout == 1:  # Moen Pull-Down Kitchen Faucet, Brass, Matte Black (MO4821)
        title = _join([_join([brand, name]), size, material, colour, quantity], ", ") + f" ({model})"
    else:  # Behr MQ4821 1 gal. Eggshell Interior Paint in Agreeable Gray (2-Pack)
        title = _join([brand, model, size, material, name, f"in {colour}" if colour else None])
        if quantity:
            title += f" ({quantity})"
    features = rng.sample(ptype.features, k=min(2, len(ptype.features)))
    description = f"{brand} {name.lower()}" + (f", {size}" if size else "") + f", with {' and '.join(features)}."
    if colour:
        description += f" Finish: {colour.lower()}."
    return Product(f"p{index:05d}", ptype.key, title, brand, model, attributes, description, None, ptype.department)


def _accessory_product(rng: random.Random, index: int, host: ProductType, used_models: set[str]) -> Product:
    name = rng.choice(host.accessories)
    brand, prefix = rng.choice(host.brands + _ACCESSORY_BRANDS)
    model = _model_number(rng, prefix, used_models)
    attributes: dict[str, str] = {}
    if rng.random() < 0.4:
        attributes["quantity"] = rng.choice(("1-Pack", "2-Pack", "3-Pack", "5-Pack"))
    if rng.random() < 0.4:
        attributes["colour"] = rng.choice(("Black", "Gray", "Silver", "White"))
    host_name = rng.choice(host.names)
    layout = rng.randrange(3)
    if layout == 0:  # Bosch Drill Bit Set for Cordless Drill/Driver, 2-Pack, GSR4821
        title = _join([f"{brand} {name} for {host_name}", attributes.get("quantity"), model], ", ")
    elif layout == 1:  # Universal Replacement Blade Compatible with DeWalt Circular Saw (UN4821)
        compatible = rng.choice(host.brands)[0]
        title = f"{brand} {name} Compatible with {compatible} {host.queries[0].title()} ({model})"
    else:  # Ryobi 18V Replacement Battery Pack, Black, PCL4821
        size = rng.choice(host.sizes) if host.sizes else None
        title = _join([_join([brand, size, name]), attributes.get("colour"), model], ", ")
    description = f"{name} made for {host.key} models. Easy to install; check compatibility before ordering."
    return Product(
        f"p{index:05d}", name.lower(), title, brand, model, attributes, description, host.key, host.department
    )


def _query_value(key: str, value: str, rng: random.Random) -> str:
    text = value.lower()
    if key == "size":
        for unit, spellings in (
            (" in.", (" in", " inch", '"')),
            (" ft.", (" ft", " foot", " feet")),
            (" gal.", (" gal", " gallon")),
            (" qt.", (" qt", " quart")),
            (" pt.", (" pint",)),
            (" cu. ft.", (" cu ft",)),
            ("v max", ("v",)),
        ):
            if text.endswith(unit):
                text = text[: -len(unit)] + rng.choice(spellings)
                break
    elif key == "quantity":
        text = text.replace("-", " ")
    return text


def _query_text(pattern: str, qname: str, values: dict[str, str], rng: random.Random) -> str:
    v = {k: _query_value(k, x, rng) for k, x in values.items()}
    if pattern == "type":
        return qname
    if pattern == "brand+type":
        return f"{v['brand']} {qname}"
    if pattern == "type+size":
        return rng.choice((f"{qname} {v['size']}", f"{v['size']} {qname}"))
    if pattern == "colour+type":
        return f"{v['colour']} {qname}"
    if pattern == "material+type":
        return f"{v['material']} {qname}"
    if pattern == "type+quantity":
        return f"{qname} {v['quantity']}"
    if pattern == "brand+model":
        return f"{v['brand']} {v['model']}"
    if pattern == "brand+size+type":
        return f"{v['brand']} {v['size']} {qname}"
    if pattern == "colour+size+type":
        return rng.choice((f"{v['size']} {v['colour']} {qname}", f"{v['colour']} {qname} {v['size']}"))
    if pattern == "brand+colour+type":
        return f"{v['brand']} {v['colour']} {qname}"
    raise ValueError(f"unknown query pattern {pattern!r}")


def _weighted_choice(rng: random.Random, weights: dict[str, float]) -> str:
    total = sum(weights.values())
    x = rng.random() * total
    for key, weight in weights.items():
        x -= weight
        if x < 0:
            return key
    return next(key for key, weight in reversed(weights.items()) if weight > 0)


def _allocate_pairs(shares: list[float], config: SyntheticCatalogConfig) -> list[int]:
    """Pairs per query: the minimum each, the rest ∝ share^power, capped at the maximum, summing to n_pairs."""
    lo, hi = config.min_pairs_per_query, config.max_pairs_per_query
    remaining = config.n_pairs - lo * len(shares)
    weights = [s**config.pair_exposure_power for s in shares]
    total = sum(weights)
    ideal = [remaining * w / total for w in weights]
    counts = [min(hi, lo + int(x)) for x in ideal]
    order = sorted(range(len(shares)), key=lambda i: (-(ideal[i] - int(ideal[i])), i))
    left = config.n_pairs - sum(counts)
    while left > 0:
        for i in order:
            if left == 0:
                break
            if counts[i] < hi:
                counts[i] += 1
                left -= 1
    return counts


def _noisy_index(rng: random.Random, index: int, n_labels: int) -> int:
    others = [j for j in range(n_labels) if j != index]
    weights = [1.0 / (j - index) ** 2 for j in others]
    x = rng.random() * sum(weights)
    for j, w in zip(others, weights, strict=True):
        x -= w
        if x < 0:
            return j
    return others[-1]


def generate_products(config: SyntheticCatalogConfig, rng: random.Random) -> list[Product]:
    """The catalog: main products spread evenly over the types, accessories evenly over their host types."""
    n_products = config.n_products or max(600, config.n_pairs // 8)
    n_accessories = max(len(PRODUCT_TYPES), round(n_products * config.accessory_share))
    n_main = n_products - n_accessories
    used_models: set[str] = set()
    kinds = [("main", PRODUCT_TYPES[i % len(PRODUCT_TYPES)]) for i in range(n_main)]
    kinds += [("accessory", PRODUCT_TYPES[i % len(PRODUCT_TYPES)]) for i in range(n_accessories)]
    rng.shuffle(kinds)
    return [
        _main_product(rng, i, ptype, used_models) if kind == "main" else _accessory_product(rng, i, ptype, used_models)
        for i, (kind, ptype) in enumerate(kinds)
    ]


def generate_queries(config: SyntheticCatalogConfig, products: list[Product], rng: random.Random) -> list[Query]:
    """Distinct queries, each anchored on one main product, with Zipf-like exposure and a head/torso/tail band."""
    by_type: dict[str, list[Product]] = {}
    for product in products:
        if product.host is None:
            by_type.setdefault(product.type, []).append(product)
    types = [t for t in PRODUCT_TYPES if t.key in by_type]
    queries: list[Query] = []
    seen: set[str] = set()
    attempts = 0
    n_queries = config.n_queries or max(1, config.n_pairs // 10)
    while len(queries) < n_queries:
        attempts += 1
        if attempts > 50 * n_queries + 1000:
            raise ValueError(
                f"could only form {len(queries)} distinct queries out of n_queries={n_queries}; "
                "raise n_products or lower n_queries"
            )
        ptype = rng.choice(types)
        anchor = rng.choice(by_type[ptype.key])
        feasible = {
            pattern: weight
            for pattern, weight in config.query_patterns.items()
            if weight > 0
            and all(key in ("brand", "model") or key in anchor.attributes for key in QUERY_PATTERNS[pattern])
        }
        if not feasible:
            continue
        pattern = _weighted_choice(rng, feasible)
        modifiers = {
            key: anchor.brand if key == "brand" else anchor.model if key == "model" else anchor.attributes[key]
            for key in QUERY_PATTERNS[pattern]
        }
        text = _query_text(pattern, rng.choice(ptype.queries), modifiers, rng)
        if normalise_query(text) in seen:
            continue
        seen.add(normalise_query(text))
        queries.append(Query(f"q{len(queries):05d}", text, ptype.key, modifiers, pattern))

    ranks = list(range(1, len(queries) + 1))
    rng.shuffle(ranks)
    raw = [r**-config.zipf_exponent for r in ranks]
    total = sum(raw)
    for query, weight in zip(queries, raw, strict=True):
        query.exposure = round(config.total_searches * weight / total, 3)
    cumulative = 0.0
    for query in sorted(queries, key=lambda q: (-q.exposure, q.id)):
        before = cumulative / config.total_searches
        query.band = (
            "head"
            if before < config.head_share
            else "torso"
            if before < config.head_share + config.torso_share
            else "tail"
        )
        cumulative += query.exposure
    return queries


def generate_catalog(config: SyntheticCatalogConfig | None = None) -> list[Record]:
    """Generate the labelled query–product pairs described in the module docstring; deterministic for a config."""
    config = (config or SyntheticCatalogConfig()).resolved()
    scheme = get_scheme(config.scheme)
    grade_map = grade_map_for(scheme, config.grade_map)
    rng = random.Random(f"lref-synthetic-{config.seed}")

    products = generate_products(config, rng)
    queries = generate_queries(config, products, rng)
    main_by_type: dict[str, list[int]] = {}
    accessories_by_host: dict[str, list[int]] = {}
    by_department: dict[str, list[int]] = {}
    for i, product in enumerate(products):
        if product.host is None:
            main_by_type.setdefault(product.type, []).append(i)
        else:
            accessories_by_host.setdefault(product.host, []).append(i)
        by_department.setdefault(product.department, []).append(i)
    department_of = {t.key: t.department for t in PRODUCT_TYPES}

    counts = _allocate_pairs([q.exposure for q in queries], config)
    records: list[Record] = []
    mix = config.candidate_mix
    for query, n_pairs in zip(queries, counts, strict=True):
        pools: dict[str, list[int]] = {"exact": [], "minor": [], "major": []}
        for i in main_by_type[query.type]:
            pools[fine_grade(query, products[i])].append(i)
        pools["accessory"] = list(accessories_by_host.get(query.type, ()))
        for pool in pools.values():
            rng.shuffle(pool)
        used: set[int] = set()
        excluded = len(main_by_type[query.type]) + len(pools["accessory"])
        n_other = len(products) - excluded
        chosen: list[tuple[int, str]] = []
        while len(chosen) < n_pairs:
            weights = {
                "match": mix.get("match", 0.0) if pools["exact"] else 0.0,
                "near_miss": mix.get("near_miss", 0.0) if pools["minor"] or pools["major"] else 0.0,
                "accessory": mix.get("accessory", 0.0) if pools["accessory"] else 0.0,
                "random": mix.get("random", 0.0) if n_other > 0 else 0.0,
            }
            if sum(weights.values()) <= 0:
                # every weighted source is used up: take whatever is left
                weights = {
                    "match": float(bool(pools["exact"])),
                    "near_miss": float(bool(pools["minor"] or pools["major"])),
                    "accessory": float(bool(pools["accessory"])),
                    "random": float(n_other > 0),
                }
                if sum(weights.values()) <= 0:
                    break
            source = _weighted_choice(rng, weights)
            if source == "match":
                chosen.append((pools["exact"].pop(), "exact"))
            elif source == "near_miss":
                grade = "minor" if pools["minor"] and (not pools["major"] or rng.random() < 0.65) else "major"
                chosen.append((pools[grade].pop(), grade))
            elif source == "accessory":
                chosen.append((pools["accessory"].pop(), "accessory"))
            else:
                department = by_department[department_of[query.type]]
                other = _random_other(rng, query, products, department, used, config.hard_negative_share)
                chosen.append((other, "other"))
                n_other -= 1
            used.add(chosen[-1][0])
        for product_index, grade in chosen:
            product = products[product_index]
            true_index = grade_map[FINE_GRADES.index(grade)]
            noisy = config.label_noise > 0 and rng.random() < config.label_noise
            label_index = _noisy_index(rng, true_index, len(scheme)) if noisy else true_index
            records.append(
                Record(
                    id=f"{query.id}-{product.id}",
                    query=query.text,
                    title=product.title,
                    label=scheme.labels[label_index],
                    brand=product.brand,
                    description=product.description if config.descriptions else "",
                    attributes={"model": product.model, **product.attributes} if config.attributes else {},
                    exposure=query.exposure,
                    meta={
                        "source": "synthetic",
                        "query_id": query.id,
                        "product_id": product.id,
                        "query_type": query.type,
                        "product_type": product.type,
                        "product_host": product.host,
                        "query_pattern": query.pattern,
                        "query_modifiers": dict(query.modifiers),
                        "query_band": query.band,
                        "match": grade,
                        "true_label": scheme.labels[true_index],
                        "label_noise": noisy,
                    },
                )
            )
    return records


def _random_other(
    rng: random.Random, query: Query, products: list[Product], department: list[int], used: set[int], hard_share: float
) -> int:
    """A product of another type (or an accessory of another type), from the query's department with `hard_share`."""

    def unrelated(i: int) -> bool:
        p = products[i]
        return i not in used and p.type != query.type and p.host != query.type

    if department and rng.random() < hard_share:
        for _ in range(20):
            i = department[rng.randrange(len(department))]
            if unrelated(i):
                return i
    for _ in range(1000):
        i = rng.randrange(len(products))
        if unrelated(i):
            return i
    return next(i for i in range(len(products)) if unrelated(i))
