"""Procedural data for the bundled demo task: free-text support message -> strict JSON record.

Each row is an OpenAI-chat-shaped dict whose user turn is an email, chat log, voicemail
transcript or web-form submission about a product problem, and whose assistant turn is a
single-line JSON object with the keys in ``FIELDS``, in that order. Most values are
recoverable from the text: names, products and amounts are copied verbatim, and category and
priority follow from cue phrases listed in ``CATEGORY_CUES`` / ``PRIORITY_CUES``.

Two fields are knowledge the text cannot supply: the product's ``sku`` and ``warranty`` tier live
only in the product catalog (one small Markdown file per product, ``catalog/``). Eval rows are
about products that never appear in train, so a model can only get those two fields right on
the held-out split by reading the catalog entry retrieved into its prompt.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from pathlib import Path
from typing import Any

from tunesmith.atomic import write_text_atomic
from tunesmith.data.convert import write_rows

FIELDS: tuple[str, ...] = ("customer", "product", "sku", "warranty", "category", "priority", "amount", "currency")
CATALOG_FIELDS: tuple[str, ...] = ("sku", "warranty")

SYSTEM_PROMPT = (
    "Extract the support ticket as one line of JSON with keys customer, product, sku and warranty "
    "(both from the product catalog), category (billing, technical, shipping or account), "
    "priority (high, medium or low), amount (number) and currency (ISO code). "
    "Reply with only the JSON object on one line."
)

FIRST = [
    "Dana",
    "Marcus",
    "Priya",
    "Tomás",
    "Ingrid",
    "Kwame",
    "Mei",
    "Oliver",
    "Fatima",
    "Lukas",
    "Sofia",
    "Rahul",
    "Chloé",
    "Ethan",
    "Aiko",
    "Gabriel",
    "Nadia",
    "Hugo",
    "Zoë",
    "Samuel",
    "Leila",
    "Björn",
    "Grace",
    "Mateo",
    "Hannah",
    "Yusuf",
    "Elena",
    "Noah",
]
# The last five surnames only ever appear in the eval split, so eval customers are unseen.
LAST = [
    "Whitfield",
    "Okafor",
    "Lindqvist",
    "Ramírez",
    "Chen",
    "Novak",
    "Brennan",
    "Patel",
    "Schneider",
    "Dubois",
    "Kowalski",
    "Tanaka",
    "Haddad",
    "Moreau",
    "Fischer",
    "Ivanova",
    "Mensah",
    "Costa",
    "Bergström",
    "O'Neill",
    "Nakamura",
    "Yilmaz",
    "Larsen",
    "Duarte",
]
EVAL_ONLY_LAST = frozenset(LAST[-5:])
COMPANIES = [
    "Acme Logistics",
    "Northwind Traders",
    "Bluepeak Studio",
    "Harbor & Finch",
    "Greenline Foods",
    "Kestrel Analytics",
    "Orchid Dental",
    "Tidewater Legal",
    "Summit Bikes",
    "Copperleaf Café",
    "Vantage Realty",
    "Brightpath School",
]
PRODUCTS = [
    "ProBook 14",
    "AirDesk Pro",
    "Nimbus Router X2",
    "Lumen Smart Bulb",
    "PixelCam 4K",
    "QuietFan 300",
    "TrailWatch S",
    "Orbit Headphones",
    "VoltCharge 65W",
    "SoundBar Mini",
    "EchoDock 2",
    "Vista Monitor 27",
    "StrideScale",
    "CloudSync Business plan",
    "FlexKeyboard K3",
    "AquaPure Filter",
    "HomeHub Hub+",
    "SnapPrint 200",
    "GlideMouse M5",
    "ThermoMug Go",
    "SkyLink Mesh 3",
    "BreezeAir Purifier",
    "CinemaBeam Mini",
    "PocketDrive 2TB",
    "PulseBand Fit",
    "ChefMate Blender",
    "Arc Desk Lamp",
    "RoamCase 40L",
    # The last eight products only ever appear in the eval split: their SKU and warranty are unseen.
    "Halo Doorbell",
    "TerraKettle",
    "NovaTab 11",
    "Ember Space Heater",
    "ZenPod Earbuds",
    "Atlas Tripod",
    "Ripple Speaker",
    "Quill Stylus",
]
EVAL_ONLY_PRODUCTS = frozenset(PRODUCTS[-8:])
WARRANTY_TIERS = ("basic", "plus", "premium")
CATALOG_SEED = 2024
# Generic purchases for a distractor sentence: never catalog names, so retrieval finds one product per message.
ACCESSORIES = ["laptop sleeve", "spare charging cable", "screen protector", "gift card", "carry bag"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]

# Cue phrases are the only wording that signals a label; distractors never contain any of them.
CATEGORY_CUES: dict[str, tuple[str, ...]] = {
    "billing": ("charged twice", "double charge", "refund", "overcharged"),
    "technical": ("keeps crashing", "stopped working", "won't turn on", "error code"),
    "shipping": ("hasn't arrived", "tracking page", "wrong address", "arrived damaged"),
    "account": ("log in", "locked out", "reset my password", "email address on my account"),
}
PRIORITY_CUES: dict[str, tuple[str, ...]] = {
    "high": ("urgent", "asap", "as soon as possible", "critical"),
    "medium": ("next few days", "this week", "end of the week"),
    "low": ("no rush", "whenever you get a chance", "low priority"),
}
ISSUES = {
    "billing": [
        "I was charged twice for my {p} and need a refund for one of the payments.",
        "My card statement shows a double charge for the {p}.",
        "I sent the {p} back a month ago but I still haven't seen my refund.",
        "The invoice for the {p} looks off to me, I think I was overcharged.",
    ],
    "technical": [
        "My {p} keeps crashing every few minutes, which makes it useless.",
        "The {p} stopped working right after the latest update.",
        "Our {p} won't turn on anymore, even after leaving it plugged in overnight.",
        "I keep getting an error code on the {p} every time I start it up.",
    ],
    "shipping": [
        "I ordered the {p} two weeks ago and it still hasn't arrived.",
        "The tracking page for my {p} hasn't changed in ten days.",
        "The {p} I ordered was delivered to the wrong address.",
        "The {p} arrived damaged, the box was completely crushed.",
    ],
    "account": [
        "I can't log in to the portal where I manage my {p}.",
        "I've been locked out of my account since I tried to register the {p}.",
        "I need to reset my password before I can activate the {p}.",
        "Please update the email address on my account, I registered the {p} with my old one.",
    ],
}
PRIORITIES = {
    "high": [
        "This is urgent, please help.",
        "I need this sorted asap.",
        "Please get back to me as soon as possible.",
        "It's critical for our team, we rely on it daily.",
    ],
    "medium": [
        "A reply within the next few days would be great.",
        "Could someone look into it this week?",
        "I'd appreciate an answer by the end of the week.",
    ],
    "low": [
        "No rush on this, just wanted it on record.",
        "Whenever you get a chance is fine.",
        "It's low priority for me, but I'd like it fixed eventually.",
    ],
}
AMOUNTS = [
    "The order total was {a}.",
    "I paid {a} for it on {d}.",
    "Invoice {inv} came to {a}.",
    "It cost {a} in total.",
    "The amount in question is {a}.",
    "For reference, the purchase was {a}.",
]
DISTRACTORS = [
    "My order number is {o}, if that helps.",
    "We have been customers of yours for {y} years now.",
    "I also bought a {p2} from you last year and it has been fine.",
    "My colleague {f} said your team was helpful last time.",
    "I'm reachable on {ph} during office hours.",
    "Sorry if this is a bit rambling, it has been a long day.",
]
# (symbol-or-code form, placement): several surface forms per currency so the model learns
# the mapping instead of copying a code; "$" alone always means USD.
CURRENCY_FORMS = {
    "USD": [("$", "pre"), ("USD", "post"), ("US$", "pre")],
    "EUR": [("€", "pre"), ("EUR", "post"), ("€", "post")],
    "GBP": [("£", "pre"), ("GBP", "post")],
    "CAD": [("CAD", "pre"), ("CAD", "post"), ("C$", "pre")],
    "AUD": [("AUD", "pre"), ("A$", "pre")],
    "CHF": [("CHF", "pre"), ("CHF", "post")],
}
# Short messages keep a CPU training step at a few seconds.
MIN_WORDS, MAX_WORDS = 20, 55


def _ascii(s: str) -> str:
    """Lower-case ASCII transliteration, for building plausible email addresses."""
    s = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode()
    return "".join(c for c in s.lower() if c.isalnum())


def _money(rng: random.Random, currency: str) -> tuple[float, str]:
    """A random amount and its surface form in the text, e.g. (1249.5, 'USD 1,249.50')."""
    amount = round(rng.uniform(8, 1900), 2) if rng.random() < 0.7 else float(rng.randint(8, 1900))
    digits = f"{amount:,.2f}" if amount >= 1000 and rng.random() < 0.5 else f"{amount:.2f}"
    sym, where = rng.choice(CURRENCY_FORMS[currency])
    if where == "pre":
        text = f"{sym}{digits}" if not sym.isalpha() else f"{sym} {digits}"
    else:
        text = f"{digits} {sym}" if sym.isalpha() or rng.random() < 0.5 else f"{digits}{sym}"
    return amount, text


def _date(rng: random.Random) -> str:
    day, month = rng.randint(1, 28), rng.choice(MONTHS)
    return f"{day} {month}" if rng.random() < 0.5 else f"{month} {day}"


def _wrap(rng: random.Random, name: str, company: str, product: str, body: list[str]) -> str:
    """Dress the body sentences up as one of four message kinds."""
    first, last = name.split(" ", 1)
    text = " ".join(body)
    kind = rng.choice(("email", "chat", "voicemail", "form"))
    if kind == "email":
        subject = rng.choice(
            [f"Problem with my {product}", "Support request", f"Re: ticket #{rng.randint(10000, 99999)}", "Need help please"]
        )
        greet = rng.choice(["Hi,", "Hello support team,", "Dear Customer Service,", "Hi there,", "Good morning,"])
        sign = rng.choice(["Thanks,", "Best regards,", "Kind regards,", "Cheers,", "Thank you,"])
        sender = f"{_ascii(first)}.{_ascii(last)}@{_ascii(company)}.com"
        return f"From: {sender}\nSubject: {subject}\n\n{greet}\n\n{text}\n\n{sign}\n{name}\n{company}"
    if kind == "chat":
        opener = rng.choice(["hi, quick question.", "hello!", "hey there,"])
        lines = ["Agent: Thanks for contacting support, how can I help today?", f"{name}: {opener} {body[0]}"] + [
            f"{name}: {s}" for s in body[1:]
        ]
        return "\n".join(lines)
    if kind == "voicemail":
        intro = rng.choice(
            [
                f"Hi, this is {name} from {company}.",
                f"Hello, {name} calling from {company}.",
                f"Good afternoon, my name is {name}, I work at {company}.",
            ]
        )
        outro = rng.choice(["Please call me back.", "Thanks, bye.", "Talk soon."])
        return f"Voicemail transcript, {_date(rng)}: {intro} {text} {outro}"
    return (
        f"Web form submission\nName: {name}\nCompany: {company}\n"
        f"Topic: {rng.choice(['Other', 'General enquiry', 'Product support'])}\nMessage: {text}"
    )


def catalog() -> dict[str, dict[str, str]]:
    """Product -> {sku, warranty}: fixed for the package (its own seed), unrelated to the product's name."""
    rng = random.Random(CATALOG_SEED)
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    return {
        p: {
            "sku": f"{rng.choice(letters)}{rng.choice(letters)}-{rng.randint(1000, 9999)}",
            "warranty": rng.choice(WARRANTY_TIERS),
        }
        for p in PRODUCTS
    }


def catalog_slug(product: str) -> str:
    """File stem of a product's catalog entry, e.g. 'nimbus-router-x2'."""
    return re.sub(r"[^a-z0-9]+", "-", product.lower().replace("+", " plus")).strip("-")


def catalog_entry(product: str) -> str:
    """The Markdown catalog page of one product: its name as the heading, then SKU and warranty tier."""
    item = catalog()[product]
    return f"# {product}\n\nSKU: {item['sku']}\nWarranty tier: {item['warranty']}\n"


def write_catalog(out_dir: Path) -> list[Path]:
    """Write one ``<slug>.md`` per product under ``out_dir``; returns the paths in PRODUCTS order."""
    return [write_text_atomic(Path(out_dir) / f"{catalog_slug(p)}.md", catalog_entry(p)) for p in PRODUCTS]


def _row(rng: random.Random, lasts: list[str], products: list[str]) -> tuple[dict[str, Any], str]:
    """One (record, user text) pair about one of ``products``, with the customer's surname drawn from ``lasts``."""
    name = f"{rng.choice(FIRST)} {rng.choice(lasts)}"
    company, product = rng.choice(COMPANIES), rng.choice(products)
    category, priority = rng.choice(list(ISSUES)), rng.choice(list(PRIORITIES))
    currency = rng.choice(list(CURRENCY_FORMS))
    amount, money = _money(rng, currency)
    fills = {
        "a": money,
        "d": _date(rng),
        "inv": f"INV-{rng.randint(1000, 99999)}",
        "o": f"#{rng.randint(100000, 999999)}",
        "y": rng.randint(2, 12),
        "p2": rng.choice(ACCESSORIES),
        "f": rng.choice(FIRST),
        "ph": f"+{rng.randint(1, 49)} {rng.randint(100, 999)} {rng.randint(1000000, 9999999)}",
    }
    facts = [rng.choice(AMOUNTS).format(**fills), rng.choice(PRIORITIES[priority])]
    facts += [d.format(**fills) for d in rng.sample(DISTRACTORS, rng.randint(0, 1))]
    rng.shuffle(facts)
    # The issue sentence leads most of the time, as in real tickets, but not always.
    issue = rng.choice(ISSUES[category]).format(p=product)
    facts.insert(0 if rng.random() < 0.7 else rng.randint(1, len(facts)), issue)
    record = {
        "customer": name,
        "product": product,
        **catalog()[product],
        "category": category,
        "priority": priority,
        "amount": amount,
        "currency": currency,
    }
    return record, _wrap(rng, name, company, product, facts)


def _rows(n: int, rng: random.Random, lasts: list[str], products: list[str], start: int, seen: set[str]) -> list[dict[str, Any]]:
    """``n`` chat rows with ids from ``start``, skipping texts already in ``seen`` (updated)."""
    rows: list[dict[str, Any]] = []
    for _ in range(n * 50):  # generous cap: collisions are rare, but never loop forever
        if len(rows) == n:
            return rows
        record, text = _row(rng, lasts, products)
        # Resample rather than truncate so every text stays a complete, natural message.
        if text in seen or not MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            continue
        seen.add(text)
        answer = json.dumps(record, ensure_ascii=False, separators=(", ", ": "))
        rows.append(
            {
                "id": f"demo-{start + len(rows):06d}",
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": answer},
                ],
            }
        )
    raise RuntimeError(f"could not generate {n} unique rows")


def generate(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rows, deterministic for ``seed``, with no duplicate user texts."""
    return _rows(n, random.Random(seed), LAST, PRODUCTS, 0, set())


def make_splits(n_train: int = 400, n_eval: int = 60, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Disjoint train/eval rows: eval customers have held-out surnames and eval products held-out catalog entries;
    ids run on from train."""
    rng, seen = random.Random(seed), set[str]()
    train_products = [p for p in PRODUCTS if p not in EVAL_ONLY_PRODUCTS]
    train = _rows(n_train, rng, [s for s in LAST if s not in EVAL_ONLY_LAST], train_products, 0, seen)
    eval_ = _rows(n_eval, rng, sorted(EVAL_ONLY_LAST), sorted(EVAL_ONLY_PRODUCTS), n_train, seen)
    return train, eval_


def write_splits(out_dir: Path, n_train: int = 400, n_eval: int = 60, seed: int = 0) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``eval.jsonl`` under ``out_dir``; returns their paths."""
    return write_split_files(out_dir, *make_splits(n_train, n_eval, seed))


def write_split_files(out_dir: Path, train: list[dict[str, Any]], eval_: list[dict[str, Any]]) -> tuple[Path, Path]:
    """``train.jsonl`` and ``eval.jsonl`` under ``out_dir`` (created); returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "train.jsonl", out_dir / "eval.jsonl"
    write_rows(paths[0], train)
    write_rows(paths[1], eval_)
    return paths


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    for p in [*write_splits(here / "data"), *write_catalog(here / "catalog")]:
        print(p)
