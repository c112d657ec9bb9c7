"""Write sql/current/: the schema a fresh `shoal migrate` leaves, one readable file per object.

The migrations (sql/NNN_*.sql) are forward-only and stay the source of truth, but later ones
redefine functions with CREATE OR REPLACE and alter tables, so no single file shows what the
database holds today. This script applies the migrations one at a time (with shoal.migrate, as
`shoal migrate` does) to an empty database, reads the catalog after each, and writes the final
state: one file per table (with its indexes and triggers), function (all overloads) and type,
each noting the migrations that created and changed it, plus an index (sql/current/README.md).

    PYTHONSAFEPATH=1 .venv/bin/python scripts/dump_schema.py           # rewrite sql/current/
    PYTHONSAFEPATH=1 .venv/bin/python scripts/dump_schema.py --check   # exit 1 when it is stale

Without --database-url (a server URL: a scratch database is created there, then dropped), an
embedded PostgreSQL (the `embedded` extra) is started in a temporary directory.
tests/core/test_schema_current.py fails while the files differ from what the migrations produce.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import sys
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from shoal.migrate import Migration, available, migrate_connection

REPO_ROOT = Path(__file__).resolve().parent.parent
CURRENT = REPO_ROOT / "sql" / "current"
REGENERATE = "PYTHONSAFEPATH=1 .venv/bin/python scripts/dump_schema.py"

# Schemas PostgreSQL itself owns: everything else the migrations create is dumped.
_SYSTEM_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'"
_NOT_FROM_EXTENSION = """NOT EXISTS (SELECT 1 FROM pg_depend e
                     WHERE e.classid = '{catalog}'::regclass AND e.objid = {oid} AND e.deptype = 'e')"""
_KIND_TITLE = {"tables": "table", "views": "view", "sequences": "sequence", "functions": "function",
               "types": "type", "extensions": "extension"}


class Unsupported(RuntimeError):
    """The migrations created an object this script does not know how to write: teach it, rather
    than leave the object out of sql/current/."""


@dataclass(frozen=True)
class Obj:
    kind: str  # the folder: tables, views, sequences, functions, types
    name: str  # schema-qualified, quoted where needed: shoal.jobs
    sql: str   # its definition, as the catalog has it

    @property
    def path(self) -> str:
        short = self.name.removeprefix("shoal.").replace('"', "")
        return f"{self.kind}/{short}.sql"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def _comment(conn: asyncpg.Connection, what: str, oid: int, catalog: str, subid: int = 0) -> list[str]:
    text = await conn.fetchval(
        "SELECT description FROM pg_description WHERE objoid = $1 AND classoid = $2::regclass AND objsubid = $3",
        oid, catalog, subid,
    )
    return [] if text is None else [f"COMMENT ON {what} IS {_quote(text)};"]


async def _table(conn: asyncpg.Connection, oid: int, name: str, persistence: str, options: list[str] | None) -> str:
    columns = await conn.fetch(
        """SELECT a.attnum, quote_ident(a.attname) AS col, format_type(a.atttypid, a.atttypmod) AS type,
                  a.attnotnull, a.attidentity::text, a.attgenerated::text, pg_get_expr(d.adbin, d.adrelid, true) AS expr,
                  CASE WHEN a.attcollation <> t.typcollation THEN quote_ident(co.collname) END AS collation,
                  NULLIF(a.attstorage, t.typstorage)::text AS storage, NULLIF(a.attcompression::text, '') AS compression,
                  NULLIF(a.attstattarget, -1) AS stattarget
             FROM pg_attribute a
             JOIN pg_type t ON t.oid = a.atttypid
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             LEFT JOIN pg_collation co ON co.oid = a.attcollation
            WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attnum""",
        oid,
    )
    lines, after = [], []
    for c in columns:
        line = f"{c['col']} {c['type']}"
        if c["collation"]:
            line += f" COLLATE {c['collation']}"
        if c["attidentity"]:
            line += " GENERATED " + ("ALWAYS" if c["attidentity"] == "a" else "BY DEFAULT") + " AS IDENTITY"
        elif c["attgenerated"]:
            line += f" GENERATED ALWAYS AS ({c['expr']}) STORED"
        elif c["expr"] is not None:
            line += f" DEFAULT {c['expr']}"
        if c["attnotnull"]:
            line += " NOT NULL"
        lines.append(line)
        storage = {"p": "PLAIN", "e": "EXTERNAL", "m": "MAIN", "x": "EXTENDED"}.get(c["storage"] or "")
        if storage:
            after.append(f"ALTER TABLE {name} ALTER COLUMN {c['col']} SET STORAGE {storage};")
        if c["compression"]:
            method = {"p": "pglz", "l": "lz4"}[c["compression"]]
            after.append(f"ALTER TABLE {name} ALTER COLUMN {c['col']} SET COMPRESSION {method};")
        if c["stattarget"] is not None:
            after.append(f"ALTER TABLE {name} ALTER COLUMN {c['col']} SET STATISTICS {c['stattarget']};")
        after += await _comment(conn, f"COLUMN {name}.{c['col']}", oid, "pg_class", c["attnum"])
    # NOT NULL is on its column above (PostgreSQL 18 also lists it here, as contype 'n').
    for con in await conn.fetch(
        """SELECT quote_ident(conname) AS name, pg_get_constraintdef(oid, true) AS def FROM pg_constraint
            WHERE conrelid = $1 AND contype <> 'n'
            ORDER BY array_position(ARRAY['p', 'u', 'x', 'f', 'c']::"char"[], contype), conname""",
        oid,
    ):
        lines.append(f"CONSTRAINT {con['name']} {con['def']}")
    head = "CREATE UNLOGGED TABLE" if persistence == "u" else "CREATE TABLE"
    body = f"{head} {name} (\n" + ",\n".join(f"    {line}" for line in lines) + "\n)"
    if options:
        body += " WITH (\n" + ",\n".join(f"    {o}" for o in options) + "\n)"
    out = [body + ";", *after]
    out += await _comment(conn, f"TABLE {name}", oid, "pg_class")
    if await conn.fetchval("SELECT relrowsecurity OR relforcerowsecurity FROM pg_class WHERE oid = $1", oid):
        raise Unsupported(f"row-level security on {name}")
    for q, what in (("SELECT count(*) FROM pg_inherits WHERE inhrelid = $1 OR inhparent = $1", "inheritance"),
                    ("SELECT count(*) FROM pg_policy WHERE polrelid = $1", "policies"),
                    ("SELECT count(*) FROM pg_rewrite WHERE ev_class = $1", "rules")):
        if await conn.fetchval(q, oid):
            raise Unsupported(f"{what} on {name}")
    indexes = await conn.fetch(
        """SELECT i.indexrelid, pg_get_indexdef(i.indexrelid) AS def, format('%I.%I', n.nspname, c.relname) AS name
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE i.indrelid = $1
              AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = $1
                                 AND k.contype IN ('p', 'u', 'x'))
            ORDER BY c.relname""",
        oid,
    )
    for ix in indexes:
        out.append(f"{ix['def']};")
        out += await _comment(conn, f"INDEX {ix['name']}", ix["indexrelid"], "pg_class")
    for tg in await conn.fetch(
        "SELECT pg_get_triggerdef(oid, true) AS def FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal ORDER BY tgname",
        oid,
    ):
        out.append(f"{tg['def']};")
    return "\n".join(out) + "\n"


async def _sequence(conn: asyncpg.Connection, oid: int, name: str) -> str:
    s = await conn.fetchrow(
        """SELECT format_type(seqtypid, NULL) AS type, seqstart, seqincrement, seqmin, seqmax, seqcache, seqcycle,
                  (SELECT format('%I.%I.%I', n.nspname, c.relname, a.attname)
                     FROM pg_depend d JOIN pg_class c ON c.oid = d.refobjid
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                     JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = $1 AND d.deptype = 'a') AS owner
             FROM pg_sequence WHERE seqrelid = $1""",
        oid,
    )
    out = (f"CREATE SEQUENCE {name} AS {s['type']} START WITH {s['seqstart']} INCREMENT BY {s['seqincrement']}"
           f" MINVALUE {s['seqmin']} MAXVALUE {s['seqmax']} CACHE {s['seqcache']}{' CYCLE' if s['seqcycle'] else ''}")
    if s["owner"]:
        out += f" OWNED BY {s['owner']}"
    return "\n".join([out + ";", *await _comment(conn, f"SEQUENCE {name}", oid, "pg_class")]) + "\n"


async def _relations(conn: asyncpg.Connection) -> list[Obj]:
    found = []
    rows = await conn.fetch(
        f"""SELECT c.oid, c.relkind::text, c.relpersistence::text, c.reloptions, format('%I.%I', n.nspname, c.relname) AS name,
                   EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                              AND d.deptype = 'i' AND d.refclassid = 'pg_class'::regclass) AS internal
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE {_SYSTEM_SCHEMAS} AND {_NOT_FROM_EXTENSION.format(catalog='pg_class', oid='c.oid')}
             ORDER BY n.nspname, c.relname"""  # noqa: S608 (constant text, no input)
    )
    for r in rows:
        kind, name = r["relkind"], r["name"]
        if kind == "r":
            found.append(Obj("tables", name, await _table(conn, r["oid"], name, r["relpersistence"], r["reloptions"])))
        elif kind in ("v", "m"):
            definition = await conn.fetchval("SELECT pg_get_viewdef($1::oid, true)", r["oid"])
            head = "CREATE VIEW" if kind == "v" else "CREATE MATERIALIZED VIEW"
            found.append(Obj("views", name, f"{head} {name} AS\n{definition.rstrip().rstrip(';')};\n"))
        elif kind == "S" and not r["internal"]:  # an identity column's sequence is its table's
            found.append(Obj("sequences", name, await _sequence(conn, r["oid"], name)))
        elif kind not in ("i", "S", "c"):  # indexes: with their table; composite types: in _types
            raise Unsupported(f"relation {name} of relkind {kind!r}")
    return found


async def _functions(conn: asyncpg.Connection) -> list[Obj]:
    rows = await conn.fetch(
        f"""SELECT p.oid, p.prokind::text, format('%I.%I', n.nspname, p.proname) AS name,
                   format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)) AS signature
              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE {_SYSTEM_SCHEMAS} AND {_NOT_FROM_EXTENSION.format(catalog='pg_proc', oid='p.oid')}
             ORDER BY n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)"""  # noqa: S608
    )
    by_name: dict[str, list[str]] = {}
    for r in rows:
        if r["prokind"] not in ("f", "p", "w"):
            raise Unsupported(f"{r['signature']} of prokind {r['prokind']!r}")
        definition = (await conn.fetchval("SELECT pg_get_functiondef($1::oid)", r["oid"])).rstrip()
        what = "PROCEDURE" if r["prokind"] == "p" else "FUNCTION"
        parts = [definition + ";", *await _comment(conn, f"{what} {r['signature']}", r["oid"], "pg_proc")]
        by_name.setdefault(r["name"], []).append("\n".join(parts) + "\n")
    return [Obj("functions", name, "\n".join(defs)) for name, defs in by_name.items()]


async def _types(conn: asyncpg.Connection) -> list[Obj]:
    found = []
    rows = await conn.fetch(
        f"""SELECT t.oid, t.typtype::text, t.typrelid, format('%I.%I', n.nspname, t.typname) AS name,
                   t.typcategory = 'A' AND t.typelem <> 0 AS is_array, c.relkind::text
              FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace LEFT JOIN pg_class c ON c.oid = t.typrelid
             WHERE {_SYSTEM_SCHEMAS} AND {_NOT_FROM_EXTENSION.format(catalog='pg_type', oid='t.oid')}
             ORDER BY n.nspname, t.typname"""  # noqa: S608
    )
    for r in rows:
        name, kind = r["name"], r["typtype"]
        if r["is_array"] or (kind == "c" and r["relkind"] != "c") or kind == "m":
            continue  # arrays, rows of tables and views, multiranges come with their element, relation, range
        if kind == "e":
            labels = await conn.fetch("SELECT enumlabel FROM pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder", r["oid"])
            body = f"CREATE TYPE {name} AS ENUM (\n" + ",\n".join(f"    {_quote(x['enumlabel'])}" for x in labels) + "\n);"
        elif kind == "c":
            attrs = await conn.fetch(
                """SELECT quote_ident(attname) AS a, format_type(atttypid, atttypmod) AS t FROM pg_attribute
                    WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum""",
                r["typrelid"],
            )
            body = f"CREATE TYPE {name} AS (\n" + ",\n".join(f"    {x['a']} {x['t']}" for x in attrs) + "\n);"
        elif kind == "d":
            d = await conn.fetchrow(
                """SELECT format_type(typbasetype, typtypmod) AS base, typnotnull, typdefault FROM pg_type WHERE oid = $1""",
                r["oid"],
            )
            body = f"CREATE DOMAIN {name} AS {d['base']}"
            if d["typdefault"] is not None:
                body += f" DEFAULT {d['typdefault']}"
            if d["typnotnull"]:
                body += " NOT NULL"
            for con in await conn.fetch(
                """SELECT quote_ident(conname) AS name, pg_get_constraintdef(oid, true) AS def FROM pg_constraint
                    WHERE contypid = $1 AND contype <> 'n' ORDER BY conname""",
                r["oid"],
            ):
                body += f"\n    CONSTRAINT {con['name']} {con['def']}"
            body += ";"
        else:
            raise Unsupported(f"type {name} of typtype {kind!r}")
        found.append(Obj("types", name, "\n".join([body, *await _comment(conn, f"TYPE {name}", r["oid"], "pg_type")]) + "\n"))
    return found


async def dump(conn: asyncpg.Connection) -> dict[str, Obj]:
    """Every object the migrations made, by file path. `conn` must not be the migrating one: this
    sets its search_path so that the catalog's texts name every object with its schema."""
    await conn.execute("SET search_path = pg_catalog")
    extensions = await conn.fetch("SELECT quote_ident(extname) AS name FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1")
    objs = [Obj("extensions", e["name"], f"CREATE EXTENSION {e['name']};\n") for e in extensions]
    objs += await _relations(conn) + await _functions(conn) + await _types(conn)
    return {o.path: o for o in sorted(objs, key=lambda o: o.path)}


# -- history and rendering ---------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """The schema after applying the migrations up to `version` (0: shoal.migrate's bookkeeping)."""

    version: int
    objects: dict[str, Obj]


async def server_major(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SHOW server_version_num")) // 10000


def _label(version: int, migrations: dict[int, Migration]) -> str:
    return "shoal.migrate itself" if version == 0 else f"{version:03d}_{migrations[version].name}.sql"


def render(steps: list[Step], migrations: Iterable[Migration], pg_major: int) -> dict[str, str]:
    """The files of sql/current/, by path, from the catalog after each migration."""
    by_version = {m.version: m for m in migrations}
    final = steps[-1].objects
    history: dict[str, list[int]] = {path: [] for path in final}
    for before, after in zip([Step(-1, {}), *steps], steps, strict=False):
        for path in final:
            old, new = before.objects.get(path), after.objects.get(path)
            if new is not None and (old is None or old.sql != new.sql):
                history[path].append(after.version)
    files = {}
    index = []
    for path, obj in final.items():
        versions = history[path]
        changed = ", ".join(_label(v, by_version) for v in versions[1:])
        made = f"created by {_label(versions[0], by_version)}" + (f", changed by {changed}" if changed else "")
        files[path] = (
            f"-- {obj.name} ({_KIND_TITLE[obj.kind]}) as a fresh `shoal migrate` leaves it: {made}.\n"
            f"-- Generated by scripts/dump_schema.py from the catalog. Do not edit: change the schema with a\n"
            f"-- new migration in sql/, then run `{REGENERATE}`.\n\n{obj.sql}"
        )
        index.append(f"| {_KIND_TITLE[obj.kind]} | [{obj.name}]({path}) | "
                     f"{', '.join(f'{v:03d}' if v else 'migrate' for v in versions)} |")
    files["README.md"] = README.format(regenerate=REGENERATE, index="\n".join(index), pg_major=pg_major)
    return files


README = """\
# The current schema

What a fresh `shoal migrate` leaves in the database, one file per table (with its indexes and
triggers), function (with its overloads) and type, as the catalog of PostgreSQL {pg_major} (the embedded
server of the test suite) writes them.

The migrations (`sql/NNN_*.sql`) are the source of truth: they are forward-only, and later ones
redefine functions (`CREATE OR REPLACE`) and alter tables, so read the definitions here and the
reasons there (comments outside function bodies are not kept by the catalog). Never edit these
files: add a migration, then regenerate them from it:

    {regenerate}

`tests/core/test_schema_current.py` fails while they differ from what a fresh `shoal migrate` makes.
They are not migrations (`shoal.migrate` applies only `sql/NNN_name.sql`) and are not shipped in
the package or the image.

| kind | object | migrations that created and changed it |
| --- | --- | --- |
{index}
"""


# -- driving a scratch database ----------------------------------------------------------------
def _with_db(url: str, db: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{db}"


async def steps_from_scratch(server_url: str) -> tuple[list[Step], int]:
    """Migrate a new, empty database one migration at a time: the catalog after each step, and
    the server's major version (its catalog functions' formatting may change between majors)."""
    db = "shoal_schema_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{db}"')
        migrating = await asyncpg.connect(_with_db(server_url, db))
        reading = await asyncpg.connect(_with_db(server_url, db))
        try:
            steps = []
            for version in [0, *(m.version for m in available())]:
                await migrate_connection(migrating, target=version)
                steps.append(Step(version, await dump(reading)))
            return steps, await server_major(reading)
        finally:
            await migrating.close()
            await reading.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


async def generate(server_url: str) -> dict[str, str]:
    steps, major = await steps_from_scratch(server_url)
    return render(steps, available(), major)


def on_disk(folder: Path = CURRENT) -> dict[str, str]:
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_text(encoding="utf-8")
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in (".sql", ".md")}


def diff(expected: dict[str, str], actual: dict[str, str]) -> str:
    """A unified diff from the files on disk (`actual`) to the generated ones (`expected`)."""
    out: list[str] = []
    for path in sorted(set(expected) | set(actual)):
        if path not in expected:
            out.append(f"sql/current/{path}: not generated (no such object any more): delete it\n")
        elif path not in actual:
            out.append(f"sql/current/{path}: missing\n")
        if expected.get(path) != actual.get(path):
            out += difflib.unified_diff(
                actual.get(path, "").splitlines(keepends=True), expected.get(path, "").splitlines(keepends=True),
                f"a/sql/current/{path}" if path in actual else "/dev/null",
                f"b/sql/current/{path}" if path in expected else "/dev/null",
            )
    return "".join(out)


def write(files: dict[str, str], folder: Path = CURRENT) -> None:
    for path in set(on_disk(folder)) - set(files):
        (folder / path).unlink()
    for path, text in files.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
    for d in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", help="a PostgreSQL server to use (a scratch database is created and dropped)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 with a diff when sql/current/ is stale")
    args = p.parse_args(argv)
    if args.database_url:
        files = asyncio.run(generate(args.database_url))
    else:
        from shoal.embedded import start_embedded

        with tempfile.TemporaryDirectory(prefix="shoal-schema-") as tmp:
            pg = start_embedded(Path(tmp) / "data", fast_unsafe=True)
            try:
                files = asyncio.run(generate(pg.url))
            finally:
                pg.destroy()
    if args.check:
        stale = diff(files, on_disk())
        if stale:
            print(stale, end="")
            print(f"sql/current/ is stale: regenerate it with `{REGENERATE}`", file=sys.stderr)
            return 1
        print("sql/current/ is up to date")
        return 0
    write(files)
    print(f"wrote {len(files)} files to {CURRENT.relative_to(REPO_ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
