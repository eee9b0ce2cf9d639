#!/usr/bin/env python3
"""Clean text as C4 was cleaned (t5pod/data/c4_cleaning.py) and write JSONL.

Input files (a glob pattern, read in sorted order): `*.jsonl` / `*.json` with a `text` field per line,
anything else plain text with one document per line (so each such page is a single line); `.gz` means
gzip. Output: one {"text": ...} object per kept page (gzip if it ends in .gz), written to a temporary
file next to it and renamed at the end. The counts are printed as one JSON line. E.g.
  python scripts/c4_clean.py --input='/data/crawl/*.jsonl.gz' --output=/data/c4/clean.jsonl \
      --bad_words=/data/badwords_en.txt
"""

import argparse
import glob
import gzip
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from t5pod.data import c4_cleaning  # noqa: E402


def _open(path, mode):
    return gzip.open(path, mode + "t", encoding="utf-8") if path.endswith(".gz") else open(path, mode, encoding="utf-8")


def is_json(path: str) -> bool:
    """*.jsonl / *.json (optionally .gz): one JSON object per line; anything else plain text."""
    name = path[:-3] if path.endswith(".gz") else path
    return name.endswith((".jsonl", ".json"))


def read_documents(paths):
    for path in paths:
        json_lines = is_json(path)
        with _open(path, "r") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if not json_lines:
                    yield line.rstrip("\n")
                    continue
                try:
                    yield json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise ValueError(
                        f"{path}:{number}: not a JSON object with a 'text' field ({type(error).__name__}: {error})"
                    ) from None


def _rules(parser, args) -> c4_cleaning.CleaningRules:
    try:
        bad_words = c4_cleaning.load_bad_words(args.bad_words) if args.bad_words else frozenset()
    except FileNotFoundError as error:
        parser.error(str(error))
    return c4_cleaning.CleaningRules(bad_words=bad_words, language=args.language, dedup=not args.no_dedup)


def _run_beam(parser, args, beam_args) -> int:
    from t5pod.data import c4_beam

    counts = c4_beam.run(args.input, args.output, _rules(parser, args), beam_args, is_json=is_json(args.input))
    print(json.dumps(counts, sort_keys=True), flush=True)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="file pattern (plain text or .jsonl, optionally .gz)")
    parser.add_argument("--output", required=True, help="output .jsonl (or .jsonl.gz) file")
    parser.add_argument("--bad_words", help="text file, one bad word or phrase per line (default: rule off)")
    parser.add_argument(
        "--language",
        choices=c4_cleaning.LANGUAGE_FILTERS,
        default="langdetect",
        help="English filter: langdetect >= 0.99 as C4 (default), a fast stop-word heuristic, or off",
    )
    parser.add_argument("--no_dedup", action="store_true", help="skip line dedup")
    parser.add_argument(
        "--beam",
        action="store_true",
        help="run as an Apache Beam pipeline (DirectRunner, or Beam's flags, e.g. --runner=DataflowRunner); "
        "--output is then a prefix of output-NNNNN-of-MMMMM.jsonl shards",
    )
    args, beam_args = parser.parse_known_args(argv)
    if beam_args and not args.beam:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)} (Beam's flags go with --beam)")
    if args.beam:
        return _run_beam(parser, args, beam_args)

    paths = sorted(glob.glob(args.input))
    if not paths:
        parser.error(f"--input {args.input!r} matches no file")
    rules = _rules(parser, args)
    cleaner = c4_cleaning.C4Cleaner(rules)

    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=os.path.basename(args.output) + ".", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the output the usual permissions.
    try:
        with (
            gzip.open(tmp, "wt", encoding="utf-8") if args.output.endswith(".gz") else open(tmp, "w", encoding="utf-8")
        ) as f:
            for text in c4_cleaning.clean_pages(read_documents(paths), cleaner=cleaner):
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        os.replace(tmp, args.output)
    except BaseException:
        os.unlink(tmp)
        raise
    print(json.dumps(cleaner.counts, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
