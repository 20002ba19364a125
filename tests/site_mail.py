"""A simulated site for the learning tests: the newsletter its users want, written here, which
the shipped model junks about half of, beside real corpus mail; and the real `milter learn`
and `milter retrain` commands run on it as subprocesses."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("MILTER_CORPUS", "/work/corpus"))
PRODUCTS = (
    "garden chairs", "winter coats", "coffee beans", "running shoes", "desk lamps", "wool socks",
    "tea sets", "bike lights", "rain jackets", "picnic baskets",
)  # fmt: skip


def newsletter(i: int) -> bytes:
    """Issue `i` of a shop's newsletter a site's users subscribed to: sales language, HTML."""
    r = random.Random(i)
    a, b = r.sample(PRODUCTS, 2)
    pct = r.choice([20, 25, 30, 40, 50])
    return (
        "From: Northwind Outfitters <news@northwind-outfitters.example>\r\nTo: user@example.net\r\n"
        f"Subject: {pct}% off {a} this weekend only!\r\nDate: Mon, {1 + i % 27} Oct 2025 08:00:00 +0000\r\n"
        f"Message-ID: <nl{i}@mail.northwind-outfitters.example>\r\n"
        "List-Unsubscribe: <https://northwind-outfitters.example/unsub>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        f"<html><body><h1>SALE! {pct}% OFF</h1><p>Limited time offer: save {pct}% on {a} and {b}. "
        "FREE shipping on orders over $50! Click here to claim your discount. Shop now before it's gone.</p>"
        f"<p><a href='https://click.northwind-outfitters.example/c/{i}'>SHOP NOW</a></p>"
        "<p>You receive this because you subscribed. "
        "<a href='https://northwind-outfitters.example/unsub'>Unsubscribe</a></p></body></html>\r\n"
    ).encode()


def corpus_files(label: str, source: str, count: int, skip: int = 0) -> list[Path]:
    """`count` messages of one source of the modern corpus (after the first `skip`)."""
    files = sorted((CORPUS / "modern" / label).glob(f"{source}.*.eml"))[skip : skip + count]
    assert len(files) == count, f"not {count} {label} of {source} in {CORPUS}/modern (set MILTER_CORPUS)"
    return files


def write(directory: Path, raws: list[bytes]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, raw in enumerate(raws):
        path = directory / f"{i:04d}.eml"
        path.write_bytes(raw)
        paths.append(path)
    return paths


def milter(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "milter", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else dict(os.environ),
        cwd=cwd,
        timeout=300,
        check=False,
    )


def learn(store: Path, label: str, files: list[Path], user: str = "alice") -> None:
    done = milter("learn", f"--{label}", "--store", str(store), "--user", user, *map(str, files))
    assert done.returncode == 0, done.stderr


def site_store(tmp_path: Path, name: str = "store", flip: bool = False) -> Path:
    """A store as a site fills it: half of 80 newsletters taught ham, 40 spam and 20 list mail
    the users filed, labels the wrong way round with `flip`."""
    store = tmp_path / name
    store.mkdir()
    ham, spam = ("spam", "ham") if flip else ("ham", "spam")
    learn(store, ham, write(tmp_path / f"{name}-nl", [newsletter(i) for i in range(0, 80, 2)]))
    learn(store, spam, corpus_files("spam", "industrypack-devel.lists.sourceforge.net", 40))
    learn(store, ham, corpus_files("ham", "samba-technical.lists.samba.org", 20))
    return store
