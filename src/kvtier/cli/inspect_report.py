"""How ``kvtier inspect`` prints its report for people (the checks live in inspect.py)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..config import format_size
from ..tiers.disk_index import KEY_BYTES


def short_key(key: bytes) -> str:
    """``nsnsnsns…chainchainch``: the namespace's first 4 bytes and the chain digest's first 6."""
    if len(key) != KEY_BYTES:
        return key.hex() or "(empty key)"
    return f"{key[:4].hex()}…{key[16:22].hex()}"


def _ago(seconds: float) -> str:
    seconds = abs(seconds)
    for unit, scale, above in (("d", 86400, 2 * 86400), ("h", 3600, 2 * 3600), ("m", 60, 120)):
        if seconds >= above:
            return f"{seconds / scale:.0f}{unit}"
    return f"{seconds:.0f}s"


def _when(wall: float | None, now: float) -> str:
    if wall is None:
        return "—"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))
    return f"{stamp} ({_ago(now - wall)} {'ago' if wall <= now else 'ahead'})"


def _expiry(deadline: float | None, now: float) -> str:
    if deadline is None:
        return "—"
    return f"in {_ago(deadline - now)}" if deadline > now else f"expired {_ago(now - deadline)} ago"


def print_report(doc: dict, now: float) -> None:
    console = Console()
    console.print(f"[bold]{escape(doc['path'])}[/]", soft_wrap=True)
    label = f" · namespace {doc['namespace']!r}" if doc["namespace"] else ""
    console.print(f"kvtier disk tier · format {doc['format']} · slot {format_size(doc['slot_bytes'])} · "
                  f"{len(doc['paths'])} path(s){escape(label)}", soft_wrap=True)
    if doc["in_use_by_pid"] is not None:
        console.print(f"[yellow]in use by pid {doc['in_use_by_pid']}: the figures are a live snapshot[/]",
                      soft_wrap=True)
    facts = Table(show_header=False, box=None)
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("entries", f"{doc['entries']:,} ({doc['valid_entries']:,} valid), "
                             f"{format_size(doc['payload_bytes'])} payload")
    facts.add_row("slots", f"{doc['slots']['used']:,} used of {doc['slots']['total']:,}")
    for f in doc["data_files"]:
        facts.add_row(escape(f["path"]), "missing" if not f["exists"] else
                      f"{format_size(f['apparent_bytes'])} apparent, "
                      f"{format_size(f['allocated_bytes'])} allocated")
    times = doc["times"]
    facts.add_row("created", f"oldest {_when(times['oldest_created'], now)}, "
                             f"newest {_when(times['newest_created'], now)}")
    facts.add_row("last access", f"newest {_when(times['newest_access'], now)}")
    facts.add_row("TTL", f"{doc['ttl']['with_deadline']:,} with a deadline, {doc['ttl']['expired']:,} expired")
    sizes = doc["sizes"]
    if sizes["min"] is not None:
        facts.add_row("page size", f"min {format_size(sizes['min'])} · median {format_size(sizes['median'])}"
                                   f" · max {format_size(sizes['max'])}")
        for bucket in sizes["histogram"]:
            width = max(1, round(30 * bucket["count"] / max(b["count"] for b in sizes["histogram"])))
            facts.add_row(f"  ≤ {format_size(bucket['up_to'])}", f"{'█' * width} {bucket['count']:,}")
    if len(doc["key_namespaces"]) > 1:
        facts.add_row("key namespaces", f"{len(doc['key_namespaces'])}")
    console.print(facts)
    if doc["listed"]:
        table = Table(title=f"first {len(doc['listed'])} of {doc['valid_entries']:,} entries (key order)")
        for name in ("key", "slot", "size", "age", "last access", "expiry"):
            table.add_column(name, justify="left" if name in ("key", "expiry") else "right")
        for e in doc["listed"]:
            table.add_row(short_key(bytes.fromhex(e["key"])), str(e["slot"]), format_size(e["size"]),
                          _ago(now - e["created"]), f"{_ago(now - e['last_access'])} ago",
                          _expiry(e["deadline"], now))
        console.print(table)
    if doc["verified"]:
        console.print(f"read and checked {doc['valid_entries']:,} page(s); {doc['orphan_slots']:,} orphan "
                      "slot(s) (intact pages no record names: free space, harmless)", soft_wrap=True)
        if doc["changed_during_scan"]:
            console.print(f"{doc['changed_during_scan']} page(s) changed by the live store while "
                          "scanning (not counted)", soft_wrap=True)
    for p in doc["problems"]:
        key = short_key(bytes.fromhex(p["key"]))
        where = "" if p["slot"] is None else f" slot {p['slot']}"
        console.print(f"[red]✗[/] {key}{where}: {p['problem']}: {escape(p['detail'])}", soft_wrap=True)
    if doc["problems"]:
        count = len(doc["problems"])
        console.print(f"[red]{count} corrupt entr{'y' if count == 1 else 'ies'}[/] (a store drops "
                      "undecodable or misplaced records at open, and misses the others as corrupt)",
                      soft_wrap=True)
    elif doc["verified"]:
        console.print("[green]OK[/]: every page verifies")
    else:
        console.print("[green]index OK[/] (run with --verify to read and check every page)")
