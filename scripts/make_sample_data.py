#!/usr/bin/env python3
"""Generate the synthetic e-commerce sample data set in ``fixtures/sample/``.

Usage (the exact command that produced the committed fixtures)::

    python scripts/make_sample_data.py --out fixtures/sample --seed 7 --users 50 --items 300

Only the standard library is used (``random.Random(seed)``, ``csv``), so the same seed and sizes give
byte-for-byte identical files. Written files (UTF-8, ``\\n`` line endings):

* ``items.csv``  -- item_id,title,category,description,price,brand (unique ids "SKU-10001"..., unique titles)
* ``events.csv`` -- user_id,item_id,behavior,timestamp,value,text. Clean: sorted by timestamp, ISO-8601 UTC
  timestamps ("2026-09-14T10:32:05Z"), lower-case behaviors, no duplicate rows, every item_id in
  items.csv, empty item_id only on ``search`` rows, value = price paid (purchase) or 1-5 (rating).
* ``events_dirty.csv`` -- same columns, for the cleaning-report tests (counts below).
* ``README.md``

Planted dirt in events_dirty.csv (fixed counts, independent of --seed/--users/--items):
``BASE_ROWS`` = 200 distinct rows copied verbatim from events.csv, plus the dirt rows below. Every dirt
row has exactly ONE defect, and each non-duplicate dirt row is made from its own events.csv row that is
not among the 200 copies, so the kinds never overlap and fixing one never creates a duplicate:

    duplicate_rows          12  exact copies of 12 distinct copied rows (drop_duplicates removes 12)
    missing_user_id          5  user_id empty
    missing_item_id          6  item_id empty on a non-search row
    missing_behavior         4  behavior empty
    unparseable_timestamp    5  "not-a-date", "2026-13-45T25:61:00Z", "2026-02-30T12:00:00Z", "yesterday", "??"
    epoch_timestamp          6  integer epoch seconds (e.g. "1790000000") instead of ISO-8601
    uppercase_behavior       7  behavior upper-cased ("PURCHASE" x2, "VIEW", "CLICK", "CART", "SEARCH", "RATING")
    rating_value_text        1  a rating row whose value is "five"

    total rows = 200 + 12 + 5 + 6 + 4 + 5 + 6 + 7 + 1 = 246
"""

from __future__ import annotations

import argparse
import csv
import random
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

ITEM_COLUMNS = ("item_id", "title", "category", "description", "price", "brand")
EVENT_COLUMNS = ("user_id", "item_id", "behavior", "timestamp", "value", "text")
BEHAVIORS = ("view", "click", "cart", "purchase", "rating", "search", "like", "dislike")

END = datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC)
DAYS = 90
START_DAY = datetime(2026, 10, 31, tzinfo=UTC) - timedelta(days=DAYS - 1)  # 2026-08-03 .. 2026-10-31

BASE_ROWS = 200
DIRT_COUNTS: dict[str, int] = {
    "duplicate_rows": 12,
    "missing_user_id": 5,
    "missing_item_id": 6,
    "missing_behavior": 4,
    "unparseable_timestamp": 5,
    "epoch_timestamp": 6,
    "uppercase_behavior": 7,
    "rating_value_text": 1,
}
UNPARSEABLE_TIMESTAMPS = ("not-a-date", "2026-13-45T25:61:00Z", "2026-02-30T12:00:00Z", "yesterday", "??")
UPPERCASE_SOURCES = ("purchase", "view", "click", "cart", "purchase", "search", "rating")

# Share of sessions started in each hour of the day (UTC): quiet nights, lunch and evening peaks.
HOUR_WEIGHTS = (1, 0.6, 0.4, 0.3, 0.3, 0.5, 1, 2, 3, 3, 3, 3, 4, 4, 3, 3, 3, 4, 5, 6, 7, 7, 5, 2)


def _r(lo: int, hi: int, step: int = 1) -> tuple[str, ...]:
    return tuple(str(x) for x in range(lo, hi + 1, step))


# --------------------------------------------------------------------------------------------------
# Catalog templates. Every brand, model and book/game name is invented.
# A product type: title/desc templates ({slot} fields drawn from the category pools, type pools
# override), a price range, and the noun used in reviews.
# --------------------------------------------------------------------------------------------------

_BOOK_ADJ = ("Glass", "Silent", "Drowned", "Last", "Hollow", "Ninth", "Iron", "Quiet", "Burning", "Distant")
_BOOK_NOUN = (
    "Orbit",
    "Signal",
    "Ark",
    "Horizon",
    "Archive",
    "Colony",
    "Lantern",
    "Engine",
    "Cartographer",
    "Tide",
)
_BOOK_PLACE = ("Kepler Station", "the Outer Reach", "Cassini Deep", "the Pale Moon", "Halcyon", "the Drift")
BOOK_TITLES = tuple(f"The {a} {n}" for a in _BOOK_ADJ for n in _BOOK_NOUN) + tuple(
    f"{n}s of {p}" for n in _BOOK_NOUN for p in _BOOK_PLACE
)

GAME_NAMES = (
    "Harbor Lords",
    "Ember Vale",
    "Skyward Canals",
    "Copper Crown",
    "Lantern Market",
    "Tidewater",
    "Moonlit Orchard",
    "Iron Meridian",
    "Marshlight",
    "Starfall Outpost",
    "Hollow Kingdom",
    "Cloudfarers",
    "Glasswing",
    "Quarry & Quill",
    "Beacon Isles",
    "Mossgate",
    "Pepper Road",
    "Foxglove Fair",
    "Rivet & Rail",
    "Nightjar",
    "Gilded Harbor",
    "Thornwick",
    "Ashfall Peaks",
    "Brambleway",
    "Orchard Wars",
    "Cinder Isle",
    "Lighthouse Keepers",
    "Kitepost",
    "Wandering Bazaar",
    "Copperfen",
    "Sunken Spire",
    "Barley & Brine",
    "Velvet Heist",
    "Tinker Towns",
    "Hollowmere",
    "Wyrmwood",
)

CATEGORIES: tuple[dict, ...] = (
    {
        "name": "Running Shoes",
        "brands": ("Stridelite", "Paceform", "Kinetra", "Swiftfen", "Roadmile"),
        "pools": {
            "model": (
                "Zephyr",
                "Tempo",
                "Cadence",
                "Glide",
                "Apex",
                "Swiftline",
                "Nimbra",
                "Rally",
                "Falcon",
            ),
            "ver": _r(2, 14),
            "gender": ("Men's", "Women's"),
            "foam": ("nitrogen-infused EVA", "PEBA-based", "dual-density EVA", "TPU-bead", "recycled EVA"),
            "upper": ("engineered mesh", "knit", "recycled polyester mesh", "jacquard mesh"),
            "weight": _r(215, 290, 5),
            "drop": ("4", "5", "6", "8", "10", "12"),
        },
        "types": (
            {
                "title": "{brand} {model} {ver} {gender} Road Running Shoe",
                "desc": "Neutral road running shoe with a {foam} foam midsole and a breathable {upper} upper. "
                "Weighs {weight} g per shoe (US 9); {drop} mm heel-to-toe drop.",
                "price": (89, 160),
                "noun": "shoes",
            },
            {
                "title": "{brand} {model} {ver} {gender} Stability Running Shoe",
                "desc": "Stability shoe with a medial guide rail and {foam} foam cushioning for overpronators. "
                "Weighs {weight} g per shoe; {upper} upper, {drop} mm drop.",
                "price": (99, 170),
                "noun": "shoes",
            },
            {
                "title": "{brand} {model} {ver} Carbon-Plate Racing Shoe",
                "desc": "Race-day shoe with a full-length carbon plate embedded in a {foam} foam midsole. "
                "Featherweight {upper} upper, {weight} g per shoe, {drop} mm drop.",
                "price": (179, 260),
                "noun": "racing shoes",
                "pools": {"weight": _r(165, 215, 5), "foam": ("PEBA-based", "supercritical TPU")},
            },
            {
                "title": "{brand} {model} {ver} Max-Cushion Running Shoe",
                "desc": "Max-cushion trainer with a 40 mm stack of {foam} foam for long, easy miles. "
                "{weight} g per shoe, {upper} upper, {drop} mm drop.",
                "price": (135, 185),
                "noun": "shoes",
                "pools": {"weight": _r(270, 320, 5)},
            },
            {
                "title": "{brand} {model} {ver} {gender} Lightweight Daily Trainer",
                "desc": "Lightweight daily trainer for tempo runs and easy days, with a {foam} foam midsole. "
                "Weighs {weight} g per shoe; {upper} upper, {drop} mm drop.",
                "price": (75, 130),
                "noun": "trainers",
                "pools": {"weight": _r(195, 240, 5)},
            },
        ),
        "queries": (
            ("cushioned running shoes", ("cushion",), None),
            ("carbon plate racing shoes", ("carbon",), None),
            ("stability shoes for overpronation", ("stability",), None),
            ("lightweight daily trainer", ("daily trainer",), None),
            ("women's running shoes", ("women's",), None),
            ("men's road running shoes", ("men's",), None),
            ("running shoes under {budget}", (), (80, 100, 130)),
            ("marathon race shoes", ("racing",), None),
            ("low drop running shoe", ("4 mm", "5 mm"), None),
        ),
        "reviews": {
            "good": ("Comfortable from the first run, true to size.", "Great cushioning, my knees thank me."),
            "bad": ("Ran half a size small and gave me blisters.",),
        },
    },
    {
        "name": "Trail Running",
        "brands": ("Trailvane", "Mossridge", "Talusrun", "Fellcraft"),
        "pools": {
            "model": (
                "Scree",
                "Crag",
                "Cairn",
                "Tarn",
                "Bluff",
                "Switchback",
                "Ghyll",
                "Talon",
                "Moraine",
            ),
            "ver": _r(2, 9),
            "lug": ("4", "5", "6"),
            "rubber": ("sticky rubber", "dual-compound rubber", "wet-grip rubber"),
            "weight": _r(250, 330, 5),
            "liters": ("5", "8", "10", "12", "15"),
            "vestweight": _r(180, 320, 10),
            "fabric": ("nylon", "polyester", "recycled nylon"),
            "lumens": ("300", "400", "500", "650", "900"),
            "burn": ("20", "30", "40", "60"),
            "lampweight": _r(50, 95, 5),
            "polelen": ("110", "115", "120", "125", "130"),
            "poleweight": _r(240, 330, 10),
            "gaiterweight": ("40", "45", "55", "60"),
        },
        "types": (
            {
                "title": "{brand} {model} {ver} Trail Running Shoe",
                "desc": "Trail shoe with {lug} mm multidirectional lugs on a {rubber} outsole and a rock plate "
                "for technical terrain. Weighs {weight} g per shoe.",
                "price": (95, 165),
                "noun": "trail shoes",
            },
            {
                "title": "{brand} {model} {ver} Waterproof Trail Running Shoe",
                "desc": "Waterproof, breathable membrane keeps feet dry on wet trails; {lug} mm lugs on a "
                "{rubber} outsole. Weighs {weight} g per shoe.",
                "price": (125, 195),
                "noun": "trail shoes",
            },
            {
                "title": "{brand} {model} {liters}L Hydration Vest",
                "desc": "Running vest with {liters} L of storage and two 500 ml soft flasks included. "
                "Weighs {vestweight} g; stretch {fabric} mesh, sizes XS-XL.",
                "price": (65, 170),
                "noun": "vest",
            },
            {
                "title": "{brand} {model} {lumens}-Lumen Running Headlamp",
                "desc": "Rechargeable headlamp with {lumens} lumens on high and {burn} hours of runtime on low. "
                "Weighs {lampweight} g with a sweat-wicking strap, IPX4 water resistant.",
                "price": (29, 95),
                "noun": "headlamp",
            },
            {
                "title": "{brand} {model} Carbon Folding Trail Poles {polelen} cm",
                "desc": "Z-fold trail running poles with carbon fiber shafts and foam grips. "
                "{polelen} cm long, {poleweight} g per pair.",
                "price": (79, 169),
                "noun": "poles",
            },
            {
                "title": "{brand} {model} Low Trail Gaiters",
                "desc": "Stretch gaiters that keep grit and stones out of your shoes. "
                "Nylon-spandex blend, {gaiterweight} g per pair, one size fits most.",
                "price": (19, 39),
                "noun": "gaiters",
            },
        ),
        "queries": (
            ("waterproof trail shoes", ("waterproof",), None),
            ("trail running shoes rock plate", ("rock plate",), None),
            ("hydration vest with flasks", ("hydration vest",), None),
            ("rechargeable running headlamp", ("headlamp",), None),
            ("ultra running vest", ("vest",), None),
            ("folding trail poles carbon", ("poles",), None),
            ("gaiters for trail running", ("gaiters",), None),
            ("trail shoes under {budget}", ("trail running shoe",), (110, 130, 150)),
        ),
        "reviews": {
            "good": ("Grippy on wet rock and mud, very happy.", "Used it for a 50k, no chafing at all."),
            "bad": ("The lugs wore down after 200 km.",),
        },
    },
    {
        "name": "Yoga & Pilates",
        "brands": ("Lotusline", "Asanora", "Bodhiflow", "Balancrest"),
        "pools": {
            "model": ("Serene", "Anchor", "Balance", "Prana", "Drishti", "Ember", "Tide", "Root", "Lumen"),
            "thickness": ("3", "4", "5", "6", "8"),
            "matmat": ("Natural Rubber", "TPE", "Cork", "PU Grip"),
            "width": ("61", "66", "68"),
            "matweight": ("0.9", "1.2", "1.8", "2.3", "2.5"),
            "blockweight": ("320", "380", "450", "520"),
            "ringweight": ("300", "340", "380"),
            "bands": ("4", "5", "6"),
            "legfabric": ("nylon-elastane", "recycled polyester", "brushed nylon"),
            "inseam": ("63", "66", "71"),
            "strap": ("1.8", "2.5", "3"),
        },
        "types": (
            {
                "title": "{brand} {model} {thickness} mm {matmat} Yoga Mat",
                "desc": "Non-slip {matmat} yoga mat, 183 x {width} cm and {thickness} mm thick, with a textured "
                "grip surface. Weighs {matweight} kg and comes with a carrying strap.",
                "price": (29, 119),
                "noun": "mat",
            },
            {
                "title": "{brand} {model} Cork Yoga Block Set of 2",
                "desc": "Two dense cork blocks measuring 23 x 15 x 7.5 cm, {blockweight} g each. "
                "Sustainably harvested cork with rounded edges.",
                "price": (19, 39),
                "noun": "blocks",
            },
            {
                "title": "{brand} {model} Pilates Ring with Padded Handles",
                "desc": "Pilates ring 38 cm in diameter with padded handles on both sides. "
                "Fiberglass core, {ringweight} g.",
                "price": (15, 35),
                "noun": "ring",
            },
            {
                "title": "{brand} {model} Fabric Resistance Band Set ({bands} Levels)",
                "desc": "Set of {bands} latex-free fabric resistance bands from light to extra heavy, "
                "with a mesh carry bag.",
                "price": (18, 45),
                "noun": "bands",
            },
            {
                "title": "{brand} {model} High-Waist Yoga Leggings",
                "desc": "Four-way stretch {legfabric} leggings with a {inseam} cm inseam and a hidden waistband "
                "pocket. Squat-proof, sizes XS-XL.",
                "price": (39, 98),
                "noun": "leggings",
            },
            {
                "title": "{brand} {model} Cotton Yoga Strap {strap} m",
                "desc": "Cotton yoga strap, {strap} m long with a metal D-ring buckle, for deeper stretches.",
                "price": (9, 19),
                "noun": "strap",
            },
        ),
        "queries": (
            ("non slip yoga mat", ("yoga mat",), None),
            ("thick yoga mat for bad knees", ("6 mm", "8 mm"), None),
            ("cork yoga block", ("cork",), None),
            ("pilates ring", ("pilates ring",), None),
            ("resistance bands set", ("resistance band",), None),
            ("high waisted leggings with pocket", ("leggings",), None),
            ("eco friendly yoga mat natural rubber", ("natural rubber", "cork"), None),
            ("yoga mat under {budget}", ("yoga mat",), (40, 60, 80)),
        ),
        "reviews": {
            "good": ("No slipping even in hot yoga.", "Great grip and cushioning for my knees."),
            "bad": ("Strong rubber smell that won't go away.",),
        },
    },
    {
        "name": "Cycling",
        "brands": ("Cranksmith", "Veloria", "Spokehaus", "Gearloft"),
        "pools": {
            "model": (
                "Aero",
                "Sprint",
                "Climb",
                "Gravel",
                "Echelon",
                "Domestique",
                "Cadenza",
                "Col",
                "Strada",
            ),
            "vents": ("14", "16", "18", "22"),
            "helmweight": _r(230, 320, 10),
            "screen": ("2.2", "2.6", "2.8", "3.5"),
            "battery": ("15", "20", "24", "32"),
            "gps": ("200", "300", "500", "700"),
            "lumens": ("400", "600", "800", "1200"),
            "gender": ("Men's", "Women's"),
            "chamois": ("3-hour", "long-distance", "gel-infused"),
            "fabric": ("recycled nylon", "polyamide-elastane", "Italian warp-knit"),
            "axle": ("chromoly", "titanium", "stainless steel"),
            "float": ("0", "4.5", "6"),
            "pedalweight": _r(220, 320, 10),
            "psi": ("100", "120", "160"),
            "pumpweight": ("95", "110", "140"),
        },
        "types": (
            {
                "title": "{brand} {model} Road Bike Helmet",
                "desc": "Road helmet with a rotational-impact liner and {vents} vents. "
                "Weighs {helmweight} g in size M (55-59 cm).",
                "price": (69, 229),
                "noun": "helmet",
            },
            {
                "title": "{brand} {model} {gps} GPS Bike Computer",
                "desc": "GPS bike computer with a {screen}-inch color screen, turn-by-turn navigation and {battery} "
                "hours of battery life. Pairs with power meters and heart-rate sensors over Bluetooth.",
                "price": (129, 399),
                "noun": "bike computer",
            },
            {
                "title": "{brand} {model} {lumens} Lumen Bike Light Set",
                "desc": "USB-C rechargeable front and rear light set; the front light puts out {lumens} lumens. "
                "IPX6 water resistant with tool-free mounts.",
                "price": (29, 99),
                "noun": "lights",
            },
            {
                "title": "{brand} {model} {gender} Padded Bib Shorts",
                "desc": "Bib shorts with a {chamois} chamois, compressive {fabric} fabric and silicone leg "
                "grippers. Sizes S-XXL.",
                "price": (59, 159),
                "noun": "bib shorts",
            },
            {
                "title": "{brand} {model} Clipless Road Pedals",
                "desc": "Road pedals with a {axle} axle and {float}° float cleats included. {pedalweight} g per pair.",
                "price": (59, 189),
                "noun": "pedals",
            },
            {
                "title": "{brand} {model} Mini Bike Pump {psi} psi",
                "desc": "Aluminum mini pump with a Presta/Schrader head, up to {psi} psi. "
                "Weighs {pumpweight} g with a frame mount.",
                "price": (19, 49),
                "noun": "pump",
            },
        ),
        "queries": (
            ("lightweight bike helmet", ("helmet",), None),
            ("gps bike computer with navigation", ("bike computer",), None),
            ("bright bike lights usb rechargeable", ("light set",), None),
            ("padded bib shorts", ("bib shorts",), None),
            ("clipless pedals road", ("pedals",), None),
            ("bike computer under {budget}", ("bike computer",), (150, 200, 250)),
            ("cycling helmet under {budget}", ("helmet",), (80, 100, 150)),
            ("mini pump presta", ("pump",), None),
        ),
        "reviews": {
            "good": ("Comfortable on a 100 km ride.", "Easy to set up, pairs instantly."),
            "bad": ("The mount rattles loose on rough roads.",),
        },
    },
    {
        "name": "Camping & Hiking",
        "brands": ("Alpenglow", "Ridgefern", "Cairnway", "Timberlark", "Northhollow"),
        "pools": {
            "model": ("Kestrel", "Larkspur", "Sierra", "Fireweed", "Talus", "Larch", "Cirque", "Basecamp"),
            "persons": ("1", "2", "3"),
            "denier": ("15", "20", "30"),
            "tentkg": ("0.9", "1.1", "1.3", "1.6", "1.9"),
            "season": ("3", "4"),
            "temp": ("0", "15", "20", "30", "40"),
            "fill": ("650", "800", "850", "900"),
            "bagweight": _r(550, 1200, 50),
            "liters": ("28", "35", "40", "50", "65"),
            "packfabric": ("ripstop nylon", "recycled polyester", "waxed canvas"),
            "packweight": ("0.9", "1.2", "1.5", "1.8", "2.1"),
            "rvalue": ("2.1", "3.5", "4.2", "5.4", "7.0"),
            "padthick": ("5", "7", "8", "10"),
            "padweight": _r(340, 680, 20),
            "leather": ("nubuck leather", "full-grain leather", "synthetic"),
            "bootweight": _r(480, 720, 20),
            "stoveweight": ("45", "68", "82", "95"),
            "boil": ("3", "3.5", "4", "4.5"),
        },
        "types": (
            {
                "title": "{brand} {model} {persons}-Person Ultralight Tent",
                "desc": "Freestanding {persons}-person backpacking tent with a {denier}D ripstop nylon fly and "
                "aluminum poles. Packed weight {tentkg} kg, {season}-season.",
                "price": (189, 549),
                "noun": "tent",
            },
            {
                "title": "{brand} {model} {temp}°F Down Sleeping Bag",
                "desc": "Mummy sleeping bag with {fill}-fill-power responsibly sourced down, rated to {temp}°F. "
                "Weighs {bagweight} g with a compression sack.",
                "price": (149, 429),
                "noun": "sleeping bag",
            },
            {
                "title": "{brand} {model} {liters}L Hiking Backpack",
                "desc": "{liters}-liter hiking backpack with an adjustable torso, hip-belt pockets and a "
                "{packfabric} body. Weighs {packweight} kg, hydration-sleeve compatible.",
                "price": (89, 289),
                "noun": "backpack",
            },
            {
                "title": "{brand} {model} Insulated Sleeping Pad R{rvalue}",
                "desc": "Inflatable sleeping pad with an R-value of {rvalue}, {padthick} cm thick and {padweight} g. "
                "Packs down to the size of a water bottle.",
                "price": (59, 199),
                "noun": "sleeping pad",
            },
            {
                "title": "{brand} {model} Waterproof Hiking Boot",
                "desc": "Mid-height hiking boot with a waterproof membrane, {leather} upper and lugged rubber "
                "outsole. Weighs {bootweight} g per boot.",
                "price": (119, 229),
                "noun": "boots",
            },
            {
                "title": "{brand} {model} Titanium Backpacking Stove",
                "desc": "Titanium canister stove weighing {stoveweight} g; boils 1 L of water in about {boil} minutes.",
                "price": (39, 99),
                "noun": "stove",
            },
        ),
        "queries": (
            ("ultralight 2 person tent", ("2-person",), None),
            ("backpacking tent", ("tent",), None),
            ("down sleeping bag 20 degree", ("20°f",), None),
            ("waterproof hiking boots", ("hiking boot",), None),
            ("hiking backpack", ("backpack",), None),
            ("sleeping pad for cold weather", ("sleeping pad",), None),
            ("lightweight backpacking stove", ("stove",), None),
            ("tent under {budget}", ("tent",), (250, 300, 400)),
        ),
        "reviews": {
            "good": (
                "Survived a stormy night on the ridge, bone dry.",
                "Packs small and light, perfect for thru-hiking.",
            ),
            "bad": ("Condensation everywhere after the first night.",),
        },
    },
    {
        "name": "Kitchen & Coffee",
        "brands": ("Brewmaster", "Kettlewick", "Copperleaf", "Grindwell", "Saltmarsh Kitchen"),
        "pools": {
            "model": (
                "Barista",
                "Crema",
                "Ristretto",
                "Origin",
                "Bloom",
                "Forge",
                "Kiln",
                "Hearth",
                "Pourline",
            ),
            "burr": ("38", "40", "48", "54"),
            "burrmat": ("stainless steel", "ceramic", "hardened steel"),
            "settings": ("18", "31", "40", "60"),
            "hopper": ("150", "250", "300"),
            "capacity": ("0.6", "0.8", "0.9", "1.0", "1.2"),
            "watts": ("1000", "1200", "1500"),
            "bar": ("9", "15", "19"),
            "tank": ("1.5", "1.8", "2.0"),
            "size": ("8", "10", "12"),
            "skilletkg": ("1.6", "2.3", "3.2"),
            "knifelen": ("18", "20", "21", "24"),
            "steel": ("VG-10", "AUS-10", "German X50CrMoV15", "67-layer Damascus"),
            "handle": ("pakkawood", "walnut", "olive wood", "G10"),
        },
        "types": (
            {
                "title": "{brand} {model} Conical Burr Coffee Grinder",
                "desc": "Coffee grinder with {burr} mm {burrmat} conical burrs and {settings} grind settings, "
                "from espresso to French press. {hopper} g bean hopper.",
                "price": (59, 249),
                "noun": "grinder",
            },
            {
                "title": "{brand} {model} Gooseneck Pour-Over Kettle",
                "desc": "Electric gooseneck kettle holding {capacity} L, with temperature hold to the degree. "
                "Stainless steel body, {watts} W.",
                "price": (39, 159),
                "noun": "kettle",
            },
            {
                "title": "{brand} {model} Stainless Steel French Press",
                "desc": "Double-wall stainless steel French press holding {capacity} L; keeps coffee hot for an hour. "
                "Four-level filtration, dishwasher safe.",
                "price": (25, 69),
                "noun": "French press",
            },
            {
                "title": "{brand} {model} Semi-Automatic Espresso Machine",
                "desc": "Espresso machine with a {bar}-bar pump, 58 mm portafilter and a steam wand for milk. "
                "{tank} L removable water tank.",
                "price": (299, 899),
                "noun": "espresso machine",
            },
            {
                "title": "{brand} {model} {size}-Inch Cast Iron Skillet",
                "desc": "Pre-seasoned cast iron skillet, {size} inches across and {skilletkg} kg. "
                "Oven-safe and induction-ready.",
                "price": (24, 79),
                "noun": "skillet",
            },
            {
                "title": "{brand} {model} {knifelen} cm Chef's Knife",
                "desc": "Chef's knife forged from {steel} steel: {knifelen} cm blade, {handle} handle, "
                "hand-sharpened to a 15° edge.",
                "price": (39, 189),
                "noun": "knife",
            },
        ),
        "queries": (
            ("burr coffee grinder", ("burr",), None),
            ("coffee grinder for espresso", ("grinder",), None),
            ("gooseneck kettle", ("gooseneck",), None),
            ("french press stainless", ("french press",), None),
            ("espresso machine with steam wand", ("espresso machine",), None),
            ("cast iron skillet 12 inch", ("12-inch",), None),
            ("japanese chef knife", ("chef's knife",), None),
            ("coffee grinder under {budget}", ("grinder",), (80, 100, 150)),
        ),
        "reviews": {
            "good": (
                "Consistent grind, my pour-overs taste so much better.",
                "Heats up fast and looks great.",
            ),
            "bad": ("Too loud for early mornings.",),
        },
    },
    {
        "name": "Home Office",
        "brands": ("Deskward", "Quillstone", "Worknook", "Keysmith", "Lumenary"),
        "pools": {
            "model": ("Focus", "Studio", "Atlas", "Nimbus", "Vertex", "Harbor", "Slate", "Orbit", "Cove"),
            "silent": ("Silent Red", "Silent Tactile", "Silent Linear"),
            "loud": ("Blue Clicky", "Brown Tactile", "Yellow Linear"),
            "layout": ("75%", "TKL", "full-size", "65%"),
            "kbweight": _r(650, 1200, 50),
            "armrests": ("3D", "4D", "flip-up"),
            "maxload": ("110", "120", "136", "150"),
            "seat": ("42-52", "44-54", "46-56"),
            "deskw": ("120", "140", "160", "180"),
            "desktop": ("bamboo", "walnut-veneer", "white laminate", "oak-veneer"),
            "monitorin": ("27", "32", "34", "49"),
            "armkg": ("8", "9", "12", "15"),
            "dpi": ("2400", "4000", "8000"),
            "mouseweight": ("95", "110", "125", "135"),
            "lampw": ("8", "10", "12"),
        },
        "types": (
            {
                "title": "{brand} {model} Quiet Mechanical Keyboard ({silent} Switches)",
                "desc": "{layout} mechanical keyboard with {silent} switches and dampening foam for quiet typing. "
                "Hot-swappable, USB-C and Bluetooth, {kbweight} g.",
                "price": (59, 179),
                "noun": "keyboard",
            },
            {
                "title": "{brand} {model} {layout} Mechanical Keyboard ({loud} Switches)",
                "desc": "{layout} mechanical keyboard with {loud} switches, PBT keycaps and per-key RGB. "
                "Hot-swappable, wired USB-C, {kbweight} g.",
                "price": (49, 159),
                "noun": "keyboard",
            },
            {
                "title": "{brand} {model} Ergonomic Mesh Office Chair",
                "desc": "Office chair with a breathable mesh back, adjustable lumbar support and {armrests} armrests. "
                "Supports up to {maxload} kg; seat height {seat} cm.",
                "price": (179, 549),
                "noun": "chair",
            },
            {
                "title": "{brand} {model} {deskw} x 70 cm Electric Standing Desk",
                "desc": "Dual-motor standing desk with a {deskw} x 70 cm {desktop} top and a height range of "
                "62-127 cm. Four memory presets, {maxload} kg capacity.",
                "price": (299, 699),
                "noun": "desk",
            },
            {
                "title": "{brand} {model} Gas-Spring Monitor Arm",
                "desc": "Single monitor arm for screens up to {monitorin} inches and {armkg} kg, with gas-spring "
                "height adjustment and built-in cable management.",
                "price": (49, 149),
                "noun": "monitor arm",
            },
            {
                "title": "{brand} {model} Wireless Vertical Mouse",
                "desc": "Vertical mouse at a 57° angle to reduce wrist strain, with silent clicks and up to "
                "{dpi} DPI. Rechargeable, {mouseweight} g.",
                "price": (29, 89),
                "noun": "mouse",
            },
            {
                "title": "{brand} {model} LED Desk Lamp with Wireless Charger",
                "desc": "Dimmable {lampw} W LED desk lamp with five color temperatures and a 10 W wireless charging "
                "base. Aluminum arm, USB-C port.",
                "price": (35, 99),
                "noun": "lamp",
            },
        ),
        "queries": (
            ("quiet mechanical keyboard under {budget}", ("quiet",), (80, 100, 150)),
            ("ergonomic office chair lumbar support", ("office chair",), None),
            ("electric standing desk", ("standing desk",), None),
            ("monitor arm for ultrawide", ("monitor arm",), None),
            ("vertical mouse for wrist pain", ("vertical mouse",), None),
            ("desk lamp with wireless charger", ("desk lamp",), None),
            ("hot swappable mechanical keyboard", ("mechanical keyboard",), None),
            ("office chair under {budget}", ("office chair",), (250, 300, 400)),
        ),
        "reviews": {
            "good": ("My back pain is gone after two weeks.", "Quiet enough for video calls."),
            "bad": ("Assembly instructions were useless.",),
        },
    },
    {
        "name": "Headphones & Audio",
        "brands": ("Sonaris", "Quietwave", "Auralite", "Decibelle", "Hummingtone"),
        "pools": {
            "model": (
                "Solace",
                "Lyra",
                "Nova",
                "Drift",
                "Cadence",
                "Pulse",
                "Sable",
                "Vesper",
                "Aria",
                "Onyx",
            ),
            "code": ("Q30", "Q45", "X2", "X5", "S7", "M40", "Pro", "Lite"),
            "driver": ("30", "40", "45", "50"),
            "battery": ("30", "40", "50", "60"),
            "hpweight": _r(220, 330, 10),
            "budbattery": ("6", "7", "8", "10"),
            "casebattery": ("24", "28", "32", "36"),
            "ipx": ("4", "5", "7"),
            "speakerw": ("10", "20", "30", "40"),
            "speakerbat": ("12", "16", "20", "24"),
            "speakerweight": _r(350, 950, 50),
            "impedance": ("32", "80", "150", "250"),
            "bitdepth": ("16", "24"),
            "boneweight": ("26", "29", "32"),
        },
        "types": (
            {
                "title": "{brand} {model} {code} Wireless Noise-Cancelling Headphones",
                "desc": "Over-ear headphones with active noise cancelling, {driver} mm drivers and {battery}-hour "
                "battery life. Weighs {hpweight} g, folds flat, USB-C fast charging.",
                "price": (99, 399),
                "noun": "headphones",
            },
            {
                "title": "{brand} {model} {code} True Wireless Earbuds",
                "desc": "In-ear earbuds with {budbattery} hours of playback ({casebattery} with the charging case) "
                "and IPX{ipx} sweat resistance. Three sizes of silicone tips included.",
                "price": (39, 249),
                "noun": "earbuds",
            },
            {
                "title": "{brand} {model} Portable Bluetooth Speaker",
                "desc": "Waterproof IP67 speaker with {speakerw} W output and a {speakerbat}-hour battery. "
                "Weighs {speakerweight} g with a built-in strap.",
                "price": (39, 199),
                "noun": "speaker",
            },
            {
                "title": "{brand} {model} {code} Open-Back Studio Headphones",
                "desc": "Open-back wired headphones with {impedance}-ohm, {driver} mm drivers for mixing and "
                "critical listening. Detachable cable, velour pads, {hpweight} g.",
                "price": (89, 349),
                "noun": "headphones",
            },
            {
                "title": "{brand} {model} USB Condenser Microphone",
                "desc": "Cardioid USB condenser microphone recording at {bitdepth}-bit/48 kHz, with a headphone "
                "jack and desk stand. Plug-and-play for podcasts and streaming.",
                "price": (49, 169),
                "noun": "microphone",
            },
            {
                "title": "{brand} {model} Bone Conduction Sport Headphones",
                "desc": "Open-ear bone conduction headphones that keep you aware of traffic, {budbattery} hours "
                "of battery and IP{ipx}7 sweat resistance. Weighs {boneweight} g.",
                "price": (59, 149),
                "noun": "headphones",
                "pools": {"ipx": ("6",)},
            },
        ),
        "queries": (
            ("noise cancelling headphones", ("noise-cancelling",), None),
            ("wireless earbuds for running", ("earbuds", "bone conduction"), None),
            ("waterproof bluetooth speaker", ("speaker",), None),
            ("open back headphones for mixing", ("open-back",), None),
            ("usb microphone for podcast", ("microphone",), None),
            ("noise cancelling headphones under {budget}", ("noise-cancelling",), (150, 200, 250)),
            ("earbuds under {budget}", ("earbuds",), (50, 80, 100)),
        ),
        "reviews": {
            "good": ("Noise cancelling is superb on flights.", "Crisp sound and the battery lasts all week."),
            "bad": ("Bluetooth keeps dropping on my laptop.",),
        },
    },
    {
        "name": "Books: Science Fiction",
        "unique": ("booktitle", "series"),  # one author per book title and per series
        "brands": ("Larchwood Press", "Quillfeather Books", "Orrery Books", "Ninth Moon Press"),
        "pools": {
            "booktitle": BOOK_TITLES,
            "author": (
                "Mara Ellison",
                "Theo Vashti",
                "Ines Okonkwo-Hale",
                "R. J. Calloway",
                "Devika Rao",
                "Lukas Brenner",
                "Yoon-Ah Park",
                "Samuel Achterberg",
                "Priya Castellane",
                "Olu Adebayo-Marsh",
            ),
            "subgenre": (
                "space opera",
                "hard science fiction",
                "cyberpunk",
                "climate fiction",
                "first-contact",
                "time-travel",
                "post-apocalyptic",
                "military science fiction",
            ),
            "premise": (
                "a salvage crew boards a derelict ship that is still broadcasting",
                "the last archivist on a generation ship uncovers a mutiny",
                "a linguist must decode an alien signal before the fleet arrives",
                "a detective in a drowned megacity hunts a rogue AI",
                "two sisters on a half-terraformed Mars fight over the planet's water",
                "a courier crosses a collapsing wormhole network",
                "colonists wake from cryosleep two centuries too late",
                "an engineer discovers that the moon is hollow",
                "a disgraced pilot is the only one who remembers the war",
            ),
            "pages": _r(280, 560, 8),
            "series": (
                "Halcyon",
                "Outer Reach",
                "Cassini",
                "Lantern",
                "Ninth Orbit",
                "Kepler",
                "Drift",
                "Ember",
                "Tessellate",
                "Farlight",
                "Starwake",
                "Perihelion",
                "Long Quiet",
                "Vanta",
                "Ironhold",
                "Wayfarer",
            ),
            "totalpages": _r(1100, 1600, 20),
        },
        "types": (
            {
                "title": "{booktitle} by {author} (Paperback)",
                "desc": "A {subgenre} novel in which {premise}. Paperback, {pages} pages.",
                "price": (11, 19),
                "noun": "book",
            },
            {
                "title": "{booktitle} by {author} (Hardcover)",
                "desc": "A {subgenre} novel in which {premise}. First-edition hardcover, {pages} pages.",
                "price": (22, 34),
                "noun": "book",
            },
            {
                "title": "The {series} Trilogy Box Set by {author}",
                "desc": "All three novels of the {series} {subgenre} saga, in which {premise}. "
                "Three paperbacks in a slipcase, {totalpages} pages in total.",
                "price": (39, 69),
                "noun": "box set",
            },
        ),
        "queries": (
            ("space opera books", ("space opera",), None),
            ("hard sci fi novels", ("hard science fiction",), None),
            ("cyberpunk novel", ("cyberpunk",), None),
            ("first contact science fiction", ("first-contact",), None),
            ("sci fi trilogy box set", ("box set",), None),
            ("new science fiction hardcover", ("hardcover",), None),
            ("post apocalyptic books", ("post-apocalyptic",), None),
            ("climate fiction novel", ("climate fiction",), None),
        ),
        "reviews": {
            "good": (
                "Couldn't put it down, finished it in two nights.",
                "Smart worldbuilding and a great ending.",
            ),
            "bad": ("Slow first half and a rushed ending.",),
        },
    },
    {
        "name": "Board Games",
        "unique": ("gamename",),
        "brands": ("Cogwheel Games", "Dicefall Studio", "Hexfield Games", "Tabletop Lantern"),
        "pools": {
            "gamename": GAME_NAMES,
            "players": ("1-4", "2-4", "2-5", "3-6"),
            "age": ("10", "12", "14"),
            "minutes": ("45", "60", "90", "120"),
            "mechanic": (
                "Worker-placement",
                "Engine-building",
                "Deck-building",
                "Area-control",
                "Tile-laying",
            ),
            "pieces": _r(60, 180, 10),
            "coopgoal": (
                "stop a spreading wildfire",
                "escape a sinking research station",
                "cure four outbreaks before time runs out",
                "guide a lost caravan across the desert",
            ),
            "partyplayers": ("4-8", "3-10", "4-12"),
            "cards": ("110", "160", "200", "250"),
            "duelminutes": ("20", "30", "40"),
            "scenarios": ("12", "15", "24"),
        },
        "types": (
            {
                "title": "{gamename}: Strategy Board Game for {players} Players",
                "desc": "{mechanic} strategy game for {players} players, ages {age}+, about {minutes} minutes per "
                "game. Includes {pieces} wooden pieces and a double-sided board.",
                "price": (34, 79),
                "noun": "game",
            },
            {
                "title": "{gamename} Cooperative Board Game",
                "desc": "Cooperative game where {players} players work together to {coopgoal}. "
                "Ages {age}+, about {minutes} minutes.",
                "price": (29, 59),
                "noun": "game",
            },
            {
                "title": "{gamename} Party Card Game",
                "desc": "Fast party game for {partyplayers} players, ages 14+, rounds take about 15 minutes. "
                "{cards} cards in a travel-size box.",
                "price": (14, 29),
                "noun": "game",
            },
            {
                "title": "{gamename} Two-Player Card Game",
                "desc": "Tactical two-player card duel, ages {age}+, about {duelminutes} minutes. "
                "{cards} cards and a scoring board.",
                "price": (15, 30),
                "noun": "game",
            },
            {
                "title": "{gamename} Legacy Campaign Game",
                "desc": "Legacy campaign for {players} players with {scenarios} sealed scenarios that change the "
                "board for good. Ages {age}+, {minutes} minutes per session.",
                "price": (59, 99),
                "noun": "game",
            },
        ),
        "queries": (
            ("cooperative board games for family", ("cooperative",), None),
            ("strategy board game", ("strategy board game",), None),
            ("party games for adults", ("party",), None),
            ("two player card game", ("two-player",), None),
            ("worker placement game", ("worker-placement",), None),
            ("deck building game", ("deck-building",), None),
            ("legacy board game", ("legacy",), None),
            ("board games under {budget}", ("game",), (30, 40, 50)),
        ),
        "reviews": {
            "good": ("Huge hit on game night, we played it three times in a row.", "Beautiful components."),
            "bad": ("Rulebook is confusing and setup takes forever.",),
        },
    },
)

REVIEWS = {
    5: (
        "Really happy with the {noun}, exactly as described.",
        "Best {noun} I've owned, worth every penny.",
        "Great quality and fast shipping.",
        "Would buy again.",
        "Exceeded my expectations.",
    ),
    4: (
        "Very good {noun}, minor quibbles but happy overall.",
        "Solid {noun} for the price.",
        "Good quality, a bit pricey.",
        "Does the job well.",
    ),
    3: (
        "It's okay; the {noun} looked better in the photos.",
        "Average, fine for the price.",
        "Decent, but I expected more at this price.",
    ),
    2: (
        "Disappointed with the {noun}, the build feels flimsy.",
        "Not worth the price.",
        "Quality was off, sending the {noun} back.",
    ),
    1: (
        "Broke after a week.",
        "Terrible quality, returned the {noun}.",
        "Arrived damaged and support was unhelpful.",
    ),
}
DISLIKE_COMMENTS = ("Not my style.", "Too expensive.", "Looks cheap.", "Wrong size range.", "Not interested.")


@dataclass
class Item:
    item_id: str
    title: str
    category: str
    description: str
    price: float
    brand: str
    noun: str
    match_text: str


@dataclass
class User:
    user_id: str
    prefs: list[str]
    pref_weights: list[float]
    price_sensitivity: float
    n_sessions: int


Event = tuple[datetime, str, str, str, str, str]  # (ts, user_id, item_id, behavior, value, text)


# --------------------------------------------------------------------------------------------------
# Catalog
# --------------------------------------------------------------------------------------------------


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _price(rng: random.Random, lo: int, hi: int) -> float:
    whole = rng.randint(lo, hi)
    cents = rng.choices((0.99, 0.95, 0.49, 0.0), weights=(6, 2, 1, 1))[0]
    return round(whole + cents, 2)


def _make_category_items(rng: random.Random, cat: dict, count: int, seen: set[str]) -> list[dict]:
    types = list(cat["types"])
    order = [types[k % len(types)] for k in range(count)]
    rng.shuffle(order)
    used: set[tuple[str, str | None]] = set()  # values of the category's "unique" slots already taken
    out = []
    for ptype in order:
        pools = {**cat["pools"], **ptype.get("pools", {})}
        for _attempt in range(500):
            slots: dict[str, str] = {"brand": rng.choice(cat["brands"])}
            for name in _fields(ptype["title"]) + _fields(ptype["desc"]):
                if name not in slots:
                    slots[name] = rng.choice(pools[name])
            title = ptype["title"].format(**slots)
            strict = _attempt < 300  # then give up on the "unique" slots (large --items), keep titles unique
            if title not in seen and not (
                strict and any((f, slots.get(f)) in used for f in cat.get("unique", ()))
            ):
                break
        else:
            raise SystemExit(f"could not make a unique title in {cat['name']!r}; lower --items")
        seen.add(title)
        used.update((f, slots.get(f)) for f in cat.get("unique", ()) if f in slots)
        desc = ptype["desc"].format(**slots)
        out.append(
            {
                "title": title,
                "category": cat["name"],
                "description": desc[0].upper() + desc[1:],
                "price": _price(rng, *ptype["price"]),
                "brand": slots["brand"],
                "noun": ptype["noun"],
            }
        )
    return out


def make_items(rng: random.Random, n_items: int) -> list[Item]:
    n_cat = len(CATEGORIES)
    seen: set[str] = set()
    raw: list[dict] = []
    for k, cat in enumerate(CATEGORIES):
        count = n_items // n_cat + (1 if k < n_items % n_cat else 0)
        raw.extend(_make_category_items(rng, cat, count, seen))
    rng.shuffle(raw)
    return [
        Item(
            item_id=f"SKU-{10001 + i}",
            match_text=f"{r['title']} {r['description']}".lower(),
            **r,
        )
        for i, r in enumerate(raw)
    ]


# --------------------------------------------------------------------------------------------------
# Users and events
# --------------------------------------------------------------------------------------------------


def make_users(rng: random.Random, n_users: int) -> list[User]:
    width = max(3, len(str(n_users)))
    names = [c["name"] for c in CATEGORIES]
    users = []
    for u in range(1, n_users + 1):
        k = rng.choices((1, 2, 3), weights=(0.35, 0.45, 0.2))[0]
        prefs = rng.sample(names, k)
        weights = [round(rng.uniform(0.5, 1.5), 3) for _ in prefs]
        sens = round(rng.betavariate(2, 2), 2)
        n_sessions = max(3, min(30, round(rng.lognormvariate(2.3, 0.45))))
        users.append(User(f"u{u:0{width}d}", prefs, weights, sens, n_sessions))
    return users


def _fmt_ts(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


class EventGenerator:
    def __init__(self, rng: random.Random, items: list[Item]) -> None:
        self.rng = rng
        self.by_cat: dict[str, list[Item]] = {c["name"]: [] for c in CATEGORIES}
        for it in items:
            self.by_cat[it.category].append(it)
        self.median = {c: _median([it.price for it in its]) for c, its in self.by_cat.items() if its}
        self.cat_conf = {c["name"]: c for c in CATEGORIES}

    # -- helpers -----------------------------------------------------------------------------------
    def _price_weight(self, item: Item, sens: float) -> float:
        # sens 0 leans to premium items, sens 1 strongly to cheap ones
        exponent = 3.0 * (sens - 0.4)
        return (self.median[item.category] / item.price) ** exponent

    def _pick(self, cands: list[Item], weights: list[float], k: int) -> list[Item]:
        cands, weights = list(cands), list(weights)
        out = []
        for _ in range(min(k, len(cands))):
            i = self.rng.choices(range(len(cands)), weights=weights)[0]
            out.append(cands.pop(i))
            weights.pop(i)
        return out

    def _query(self, cat: str, sens: float) -> tuple[str, list[Item]]:
        """A search text for ``cat`` and the items it matches (empty: no match, browse the category)."""
        text, keywords, budgets = self.rng.choice(self.cat_conf[cat]["queries"])
        budget = None
        if budgets:
            idx = min(len(budgets) - 1, int((1 - sens) * len(budgets) + self.rng.uniform(-0.5, 0.5)))
            budget = budgets[max(0, idx)]
            text = text.format(budget=budget)
        matched = []
        for it in self.by_cat[cat]:
            if keywords and not any(re.search(r"\b" + re.escape(kw), it.match_text) for kw in keywords):
                continue
            if budget is not None and it.price > budget:
                continue
            matched.append(it)
        return text, matched

    # -- one user ----------------------------------------------------------------------------------
    def user_events(self, user: User) -> list[Event]:
        rng = self.rng
        events: list[Event] = []
        clicked: dict[str, list[Item]] = {}
        purchased: set[str] = set()
        others = [c["name"] for c in CATEGORIES if c["name"] not in user.prefs]
        day_offsets = sorted(rng.randrange(DAYS) for _ in range(user.n_sessions))
        for day in day_offsets:
            hour = rng.choices(range(24), weights=HOUR_WEIGHTS)[0]
            start = START_DAY + timedelta(
                days=day, hours=hour, minutes=rng.randrange(60), seconds=rng.randrange(60)
            )
            noise = rng.random() < 0.15
            cat = rng.choice(others) if noise else rng.choices(user.prefs, weights=user.pref_weights)[0]
            session, bought = self._session(user, start, cat, noise, clicked, purchased)
            session = [e for e in session if e[0] <= END]
            events.extend(session)
            kept = {e[2] for e in session if e[3] == "purchase"}
            for item, t in bought:
                if item.item_id in kept:
                    events.extend(self._after_purchase(user, item, t, noise))
        return events

    def _session(
        self,
        user: User,
        t: datetime,
        cat: str,
        noise: bool,
        clicked: dict[str, list[Item]],
        purchased: set[str],
    ) -> tuple[list[Event], list[tuple[Item, datetime]]]:
        rng, uid, sens = self.rng, user.user_id, user.price_sensitivity
        evs: list[Event] = []

        def add(
            behavior: str, item_id: str = "", value: str = "", text: str = "", gap: tuple = (8, 150)
        ) -> None:
            nonlocal t
            evs.append((t, uid, item_id, behavior, value, text))
            t += timedelta(seconds=rng.randint(*gap))

        pool = self.by_cat[cat]
        boost: set[str] = set()
        if rng.random() < (0.12 if noise else 0.5):
            text, matched = self._query(cat, sens)
            add("search", text=text, gap=(4, 40))
            if rng.random() < 0.2 and not noise:  # refine the query
                text, matched = self._query(cat, sens)
                add("search", text=text, gap=(4, 40))
            if rng.random() < 0.08:  # nothing caught their eye
                return evs, []
            boost = {it.item_id for it in matched}
        n_views = rng.randint(1, 3) if noise else rng.randint(2, 7)
        weights = [self._price_weight(it, sens) * (5.0 if it.item_id in boost else 1.0) for it in pool]
        viewed = self._pick(pool, weights, n_views)
        previous = [it for it in clicked.get(cat, []) if it.item_id not in purchased]
        if previous and not noise and rng.random() < 0.3:  # come back to something seen before
            again = rng.choice(previous)
            viewed = [again] + [it for it in viewed if it.item_id != again.item_id]

        carted: list[Item] = []
        for item in viewed:
            add("view", item.item_id)
            if rng.random() < (0.15 if noise else 0.5):
                add("click", item.item_id, gap=(20, 300))
                clicked.setdefault(cat, []).append(item)
                if not noise and rng.random() < 0.07:
                    add("like", item.item_id, gap=(5, 60))
                if rng.random() < (0.08 if noise else 0.32):
                    add("cart", item.item_id, gap=(10, 120))
                    carted.append(item)
            elif rng.random() < (0.06 if noise else 0.01):
                comment = rng.choice(DISLIKE_COMMENTS) if rng.random() < 0.3 else ""
                add("dislike", item.item_id, text=comment, gap=(5, 60))

        bought: list[tuple[Item, datetime]] = []
        for item in carted:
            if item.item_id in purchased:
                continue
            ratio = item.price / self.median[cat]
            p_buy = 0.6 * (1.0 - sens * min(1.0, max(0.0, ratio - 0.6)))
            if rng.random() < p_buy:
                paid = item.price
                if rng.random() < 0.2:  # a discount code or a sale
                    paid = round(item.price * (1 - rng.choice((0.1, 0.15, 0.2, 0.25))), 2)
                bought.append((item, t))
                purchased.add(item.item_id)
                add("purchase", item.item_id, value=f"{paid:.2f}", gap=(30, 120))
        return evs, bought

    def _after_purchase(self, user: User, item: Item, t: datetime, noise: bool) -> list[Event]:
        rng = self.rng
        if rng.random() >= 0.5:
            return []
        t = t + timedelta(days=rng.randint(2, 20), hours=rng.randint(0, 12), seconds=rng.randrange(3600))
        if t > END:
            return []
        mu = 3.3 if noise else 4.1
        mu -= 0.8 * user.price_sensitivity * max(0.0, item.price / self.median[item.category] - 1.0)
        rating = max(1, min(5, round(rng.gauss(mu, 0.9))))
        if rng.random() < 0.08:  # a defective unit or a wrong size: disappointed whatever the fit
            rating = rng.choice((1, 2))
        text = ""
        if rng.random() < 0.6:
            specific = self.cat_conf[item.category]["reviews"]
            pool = list(REVIEWS[rating])
            if rating >= 4:
                pool += list(specific["good"])
            elif rating <= 2:
                pool += list(specific["bad"])
            text = rng.choice(pool).format(noun=item.noun)
        out: list[Event] = [(t, user.user_id, item.item_id, "rating", str(rating), text)]
        if rating <= 2 and rng.random() < 0.5:
            t2 = t + timedelta(seconds=rng.randint(5, 90))
            if t2 <= END:
                out.append((t2, user.user_id, item.item_id, "dislike", "", ""))
        return out


def make_events(rng: random.Random, users: list[User], items: list[Item]) -> list[list[str]]:
    gen = EventGenerator(rng, items)
    events: list[Event] = []
    for user in users:
        events.extend(gen.user_events(user))
    events.sort(key=lambda e: e[0])  # stable: ties keep generation order
    rows: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for ts, uid, iid, beh, val, text in events:
        row = [uid, iid, beh, _fmt_ts(ts), val, text]
        key = tuple(row)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------
# Dirty copy
# --------------------------------------------------------------------------------------------------


def make_dirty(rng: random.Random, rows: list[list[str]]) -> tuple[list[list[str]], dict[str, int]]:
    """``BASE_ROWS`` verbatim rows of ``rows`` plus the planted dirt of ``DIRT_COUNTS`` (see module doc)."""
    by_beh: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_beh.setdefault(row[2], []).append(i)
    base: list[int] = []
    for beh in BEHAVIORS:  # a couple of every behavior, then a random fill
        base.extend(rng.sample(by_beh.get(beh, []), min(2, len(by_beh.get(beh, [])))))
    chosen = set(base)
    base.extend(rng.sample([i for i in range(len(rows)) if i not in chosen], BASE_ROWS - len(base)))
    chosen = set(base)
    free = [i for i in range(len(rows)) if i not in chosen]
    rng.shuffle(free)

    def take(pred=lambda row: True) -> int:
        for pos, i in enumerate(free):
            if pred(rows[i]):
                return free.pop(pos)
        raise SystemExit("not enough events to plant the dirt; raise --users")

    entries: list[tuple[int, int, list[str]]] = [(i, 0, list(rows[i])) for i in base]
    planted: Counter[str] = Counter()

    def plant(kind: str, src: int, row: list[str]) -> None:
        entries.append((src, 1 + len(entries), row))
        planted[kind] += 1

    for src in rng.sample(base, DIRT_COUNTS["duplicate_rows"]):
        later = src if rng.random() < 0.5 else src + rng.randint(5, 300)  # adjacent or further down
        plant("duplicate_rows", later, list(rows[src]))
    for _ in range(DIRT_COUNTS["missing_user_id"]):
        src = take()
        plant("missing_user_id", src, ["", *rows[src][1:]])
    for _ in range(DIRT_COUNTS["missing_item_id"]):
        src = take(lambda r: r[2] != "search")
        row = list(rows[src])
        row[1] = ""
        plant("missing_item_id", src, row)
    for _ in range(DIRT_COUNTS["missing_behavior"]):
        src = take()
        row = list(rows[src])
        row[2] = ""
        plant("missing_behavior", src, row)
    for bad in UNPARSEABLE_TIMESTAMPS[: DIRT_COUNTS["unparseable_timestamp"]]:
        src = take()
        row = list(rows[src])
        row[3] = bad
        plant("unparseable_timestamp", src, row)
    for _ in range(DIRT_COUNTS["epoch_timestamp"]):
        src = take()
        row = list(rows[src])
        row[3] = str(int(datetime.strptime(row[3], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()))
        plant("epoch_timestamp", src, row)
    for beh in UPPERCASE_SOURCES[: DIRT_COUNTS["uppercase_behavior"]]:
        src = take(lambda r, beh=beh: r[2] == beh)
        row = list(rows[src])
        row[2] = row[2].upper()
        plant("uppercase_behavior", src, row)
    for _ in range(DIRT_COUNTS["rating_value_text"]):
        try:
            src = take(lambda r: r[2] == "rating" and r[4] == "5")
        except SystemExit:
            src = take(lambda r: r[2] == "rating")
        row = list(rows[src])
        row[4] = "five"
        plant("rating_value_text", src, row)

    entries.sort(key=lambda e: (e[0], e[1]))
    dirty = [row for _, _, row in entries]
    counts = {kind: planted[kind] for kind in DIRT_COUNTS}
    if counts != DIRT_COUNTS:
        raise AssertionError(f"planted {counts}, expected {DIRT_COUNTS}")
    extra = sum(n - 1 for n in Counter(tuple(r) for r in dirty).values())
    if extra != DIRT_COUNTS["duplicate_rows"] or len(dirty) != BASE_ROWS + sum(DIRT_COUNTS.values()):
        raise AssertionError(f"dirty file has {extra} duplicate rows and {len(dirty)} rows")
    return dirty, counts


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def _write_csv(path: Path, header: Sequence[str], rows: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _readme(args: argparse.Namespace, n_items: int, beh_counts: Counter[str], dirt: dict[str, int]) -> str:
    total = sum(beh_counts.values())
    n_users = args.users
    lines = [
        "# Sample data (synthetic)",
        "",
        "A small, **synthetic** e-commerce behavior log for tests, docs and `recagent demo`.",
        "All users, products, brands, books and games are invented; any resemblance to real ones is accidental.",
        "Generated (byte-for-byte reproducible) by:",
        "",
        "```",
        f"python scripts/make_sample_data.py --out {args.out} --seed {args.seed} --users {n_users} "
        f"--items {args.items}",
        "```",
        "",
        "| file | contents |",
        "|---|---|",
        f"| `items.csv` | {n_items} items: item_id,title,category,description,price,brand "
        f"({len(CATEGORIES)} categories) |",
        f"| `events.csv` | {total} clean events of {n_users} users over {DAYS} days ending 2026-10-31: "
        "user_id,item_id,behavior,timestamp,value,text |",
        f"| `events_dirty.csv` | {BASE_ROWS + sum(dirt.values())} rows with planted dirt for the cleaning report |",
        "",
        "`events.csv` is clean: sorted by timestamp, ISO-8601 UTC timestamps, lower-case behaviors, no duplicate",
        "rows, every item_id in `items.csv`, empty item_id only on `search` rows. `value` is the price paid",
        "(purchase) or the 1-5 rating; `text` is the search query, a review or a short comment.",
        "",
        "Events per behavior: " + ", ".join(f"{b} {beh_counts.get(b, 0)}" for b in BEHAVIORS) + ".",
        "",
        "## Planted dirt in `events_dirty.csv`",
        "",
        f"{BASE_ROWS} distinct rows copied from `events.csv`, plus the rows below. Each dirt row has exactly one",
        f"defect, and each non-duplicate dirt row comes from its own `events.csv` row outside the {BASE_ROWS}",
        "copies, so the kinds do not overlap.",
        "",
        "| kind | rows | what |",
        "|---|---|---|",
    ]
    what = {
        "duplicate_rows": "exact copies of copied rows",
        "missing_user_id": "empty user_id",
        "missing_item_id": "empty item_id on a non-search row",
        "missing_behavior": "empty behavior",
        "unparseable_timestamp": ", ".join(f"`{s}`" for s in UNPARSEABLE_TIMESTAMPS),
        "epoch_timestamp": "epoch seconds instead of ISO-8601",
        "uppercase_behavior": "upper-case behavior (`PURCHASE`, `VIEW`, ...)",
        "rating_value_text": 'rating value `"five"`',
    }
    lines += [f"| {kind} | {n} | {what[kind]} |" for kind, n in dirt.items()]
    lines += [f"| **total rows** | **{BASE_ROWS + sum(dirt.values())}** | |", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--out", default="fixtures/sample", help="output directory (default: fixtures/sample)"
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    parser.add_argument("--users", type=int, default=50, help="number of users (default: 50)")
    parser.add_argument("--items", type=int, default=300, help="number of items (default: 300)")
    args = parser.parse_args(argv)
    if args.users < 1 or args.items < len(CATEGORIES):
        parser.error(f"need --users >= 1 and --items >= {len(CATEGORIES)}")

    rng = random.Random(args.seed)
    items = make_items(rng, args.items)
    users = make_users(rng, args.users)
    rows = make_events(rng, users, items)
    dirty, dirt = make_dirty(rng, rows)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(
        out / "items.csv",
        ITEM_COLUMNS,
        [[it.item_id, it.title, it.category, it.description, f"{it.price:.2f}", it.brand] for it in items],
    )
    _write_csv(out / "events.csv", EVENT_COLUMNS, rows)
    _write_csv(out / "events_dirty.csv", EVENT_COLUMNS, dirty)
    beh_counts = Counter(r[2] for r in rows)
    (out / "README.md").write_text(_readme(args, len(items), beh_counts, dirt), encoding="utf-8")

    print(f"wrote {out}/items.csv ({len(items)} items), events.csv ({len(rows)} events), events_dirty.csv")
    print("events per behavior: " + ", ".join(f"{b}={beh_counts.get(b, 0)}" for b in BEHAVIORS))
    print(
        f"events_dirty.csv: {len(dirty)} rows = {BASE_ROWS} copied + dirt "
        + ", ".join(f"{k}={v}" for k, v in dirt.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
