#!/usr/bin/env python3
"""Generate the small synthetic social-network fixture in ``fixtures/social/``.

Usage (the exact command that produced the committed files)::

    python scripts/make_social_data.py --out fixtures/social --seed 11 --members 40

Items are people and groups to follow (``P-001``..., ``G-001``...), each with a topic as its
category, a short bio, ``kind`` (person/group) and ``followers``; there are no prices.
Events are what members do on the network: ``view`` a profile, ``follow`` it, ``like`` or
``comment`` on its posts (the item is the author), ``search`` (no item) and, rarely,
``dislike`` ("not interested"). Members follow mostly within one to three favourite topics.
Everything is invented; only the standard library is used, so the same seed gives
byte-for-byte identical files.
"""

from __future__ import annotations

import argparse
import csv
import random
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

ITEM_COLUMNS = ("item_id", "title", "category", "description", "kind", "followers")
EVENT_COLUMNS = ("user_id", "item_id", "behavior", "timestamp", "value", "text")
END = datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC)
DAYS = 60

TOPICS: dict[str, dict[str, tuple[str, ...]]] = {
    "Trail Running": {
        "people": ("ultra runner", "trail race photographer", "mountain running coach"),
        "subjects": ("race reports", "route maps", "training logs", "gear tests"),
        "groups": ("Ridge Runners", "Muddy Miles Collective", "Dawn Trail Crew", "Summit Striders"),
        "comments": ("Great route, adding it to my list!", "How did the shoes hold up?"),
        "search": ("trail running", "ultra training"),
    },
    "Photography": {
        "people": ("street photographer", "film camera enthusiast", "landscape photographer"),
        "subjects": ("film scans", "night shots", "editing walkthroughs", "lens reviews"),
        "groups": ("Golden Hour Circle", "Film Roll Exchange", "Night Lens Society", "Wide Angle Walks"),
        "comments": ("Beautiful light in this one.", "Which film stock is this?"),
        "search": ("film photography", "street photos"),
    },
    "Board Games": {
        "people": ("board game designer", "tabletop reviewer", "game night host"),
        "subjects": ("rules explainers", "playtest notes", "co-op strategy", "game night ideas"),
        "groups": ("Meeple Meetup", "Dice Tower Tuesdays", "Co-op Table", "Legacy Campaigners"),
        "comments": ("We played this last night, so good!", "Great explainer, thanks."),
        "search": ("board game night", "co-op games"),
    },
    "Home Cooking": {
        "people": ("home baker", "weeknight cooking blogger", "fermentation hobbyist"),
        "subjects": ("sourdough bakes", "one-pot dinners", "pickling projects", "knife skills"),
        "groups": ("Sourdough Starters", "Weeknight Kitchen", "Ferment Friends", "Spice Route Supper Club"),
        "comments": ("Made this tonight, delicious.", "What flour do you use?"),
        "search": ("sourdough", "quick dinners"),
    },
    "Urban Gardening": {
        "people": ("balcony gardener", "community garden organizer", "seed saver"),
        "subjects": ("balcony harvests", "compost tips", "seed swaps", "container herbs"),
        "groups": ("Balcony Growers", "Rooftop Roots", "Seed Library Swap", "Compost Corner"),
        "comments": ("My tomatoes finally sprouted!", "Great compost tip."),
        "search": ("balcony garden", "seed swap"),
    },
    "Climate & Energy": {
        "people": ("energy policy writer", "solar installer", "climate data explainer"),
        "subjects": ("heat pump explainers", "grid charts", "policy digests", "solar builds"),
        "groups": ("Heat Pump Owners", "Community Solar Club", "Climate Data Readers", "Low Carbon Living"),
        "comments": ("Clearest chart I have seen on this.", "Thanks for the explainer."),
        "search": ("heat pumps", "community solar"),
    },
    "Indie Music": {
        "people": ("indie songwriter", "vinyl collector", "local gig promoter"),
        "subjects": ("demo tracks", "record hauls", "gig listings", "home studio tips"),
        "groups": ("Basement Shows", "Vinyl Diggers", "Bedroom Producers", "Open Mic Regulars"),
        "comments": ("This demo is lovely.", "See you at the show!"),
        "search": ("indie gigs", "vinyl records"),
    },
    "Data Science": {
        "people": ("data journalist", "machine learning engineer", "statistics teacher"),
        "subjects": ("chart makeovers", "notebook tutorials", "stats explainers", "open datasets"),
        "groups": ("Viz Critique Club", "Notebook Night", "Open Data Makers", "Stats Study Group"),
        "comments": ("Very clear explanation.", "Could you share the notebook?"),
        "search": ("data visualization", "python notebooks"),
    },
}
FIRST = (
    "Ada",
    "Bram",
    "Cleo",
    "Dario",
    "Elin",
    "Farah",
    "Gus",
    "Hana",
    "Ivo",
    "Jora",
    "Kai",
    "Lise",
    "Milo",
    "Nadia",
    "Oren",
    "Pia",
    "Quinn",
    "Rosa",
    "Soren",
    "Tova",
    "Umar",
    "Vera",
    "Wren",
    "Yusra",
)
LAST = (
    "Ashdown",
    "Brightwater",
    "Calloway",
    "Dunmore",
    "Ellery",
    "Fenwick",
    "Greaves",
    "Holloway",
    "Ingram",
    "Jessop",
    "Kettering",
    "Lindqvist",
    "Marlowe",
    "Northcott",
    "Okafor",
    "Pennick",
)
FREQUENCY = ("weekly", "twice a week", "every month", "most days")
MEETS = (
    "every Tuesday evening",
    "on the first Saturday of the month",
    "online every Sunday",
    "twice a month",
)


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_items(rng: random.Random) -> list[list[str]]:
    people: list[list[str]] = []
    groups: list[list[str]] = []
    names = [f"{f} {la}" for f in FIRST for la in LAST]
    rng.shuffle(names)
    for topic, conf in TOPICS.items():
        for _ in range(10):
            role = rng.choice(conf["people"])
            a, b = rng.sample(conf["subjects"], 2)
            name = names.pop()
            desc = f"{role.capitalize()} sharing {a} and {b} {rng.choice(FREQUENCY)}."
            people.append([name + " - " + role, topic, desc, "person", str(rng.randint(40, 9000))])
        for group in conf["groups"]:
            members = rng.randint(25, 4000)
            a = rng.choice(conf["subjects"])
            desc = f"A group of {members} members swapping {a}; meets {rng.choice(MEETS)}."
            groups.append([group, topic, desc, "group", str(members)])
    rows = [[f"P-{i:03d}", *p] for i, p in enumerate(people, start=1)]
    rows += [[f"G-{i:03d}", *g] for i, g in enumerate(groups, start=1)]
    return rows


def make_events(rng: random.Random, items: list[list[str]], n_members: int) -> list[list[str]]:
    by_topic: dict[str, list[list[str]]] = {}
    for row in items:
        by_topic.setdefault(row[2], []).append(row)
    topics = list(TOPICS)
    start = END - timedelta(days=DAYS)
    events: list[tuple[datetime, str, str, str, str, str]] = []
    for m in range(1, n_members + 1):
        uid = f"m{m:03d}"
        prefs = rng.sample(topics, rng.randint(1, 3))
        followed: set[str] = set()
        for _ in range(rng.randint(6, 16)):
            t = start + timedelta(
                days=rng.randrange(DAYS), hours=rng.randrange(24), minutes=rng.randrange(60)
            )
            topic = rng.choice(prefs) if rng.random() < 0.85 else rng.choice(topics)
            if rng.random() < 0.3:
                events.append((t, uid, "", "search", "", rng.choice(TOPICS[topic]["search"])))
                t += timedelta(seconds=rng.randint(5, 60))
            for row in rng.sample(by_topic[topic], rng.randint(1, 4)):
                item = row[0]
                events.append((t, uid, item, "view", "", ""))
                t += timedelta(seconds=rng.randint(10, 200))
                liked = topic in prefs
                if liked and item not in followed and rng.random() < 0.35:
                    followed.add(item)
                    events.append((t, uid, item, "follow", "", ""))
                    t += timedelta(seconds=rng.randint(5, 90))
                if item in followed and rng.random() < 0.5:
                    events.append((t, uid, item, "like", "", ""))
                    t += timedelta(seconds=rng.randint(5, 90))
                if item in followed and rng.random() < 0.2:
                    events.append((t, uid, item, "comment", "", rng.choice(TOPICS[topic]["comments"])))
                    t += timedelta(seconds=rng.randint(5, 90))
                if not liked and rng.random() < 0.15:
                    events.append((t, uid, item, "dislike", "", "not interested"))
    events = [e for e in events if e[0] <= END]
    events.sort(key=lambda e: e[0])
    return [[uid, item, beh, _ts(t), val, text] for t, uid, item, beh, val, text in events]


def _write(path: Path, header: Sequence[str], rows: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", default="fixtures/social")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--members", type=int, default=40)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    items = make_items(rng)
    events = make_events(rng, items, args.members)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "items.csv", ITEM_COLUMNS, items)
    _write(out / "events.csv", EVENT_COLUMNS, events)
    counts = Counter(e[2] for e in events)
    kinds = Counter(i[4] for i in items)
    readme = [
        "# Social fixture (synthetic)",
        "",
        "A small, **synthetic** social network for the `social` domain: people and groups to follow.",
        "Every name, group and post is invented. Generated (byte-for-byte reproducible) by:",
        "",
        "```",
        f"python scripts/make_social_data.py --out {args.out} --seed {args.seed} --members {args.members}",
        "```",
        "",
        "| file | contents |",
        "|---|---|",
        f"| `items.csv` | {len(items)} items ({kinds['person']} people, {kinds['group']} groups): "
        f"{','.join(ITEM_COLUMNS)}; {len(TOPICS)} topics as categories, no prices |",
        f"| `events.csv` | {len(events)} events of {args.members} members over {DAYS} days: "
        f"{','.join(EVENT_COLUMNS)} |",
        "",
        "Events per behavior: " + ", ".join(f"{b} {counts[b]}" for b in sorted(counts)) + ".",
        "",
    ]
    (out / "README.md").write_text("\n".join(readme), encoding="utf-8")
    print(f"wrote {out}: {len(items)} items, {len(events)} events ({dict(sorted(counts.items()))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
