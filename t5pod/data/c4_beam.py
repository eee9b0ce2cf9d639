"""C4 cleaning (t5pod.data.c4_cleaning) as an Apache Beam pipeline, for crawls too big for one
machine: DirectRunner here, Dataflow (or any Beam runner) by Beam's own flags.

The steps are the streaming cleaner's: clean_page on every page, line dedup across the crawl,
then the language filter and the bad words. Dedup is C4's: every line (stripped, lower-cased) is
kept on one page only, the page whose key hashes lowest (its "url" when the JSON has one, else
its text), and a page left with under 3 sentences goes. The streaming cleaner keeps a line's
first occurrence instead, so the two agree except on which page keeps a repeated line.
"""

import hashlib
import json
from typing import Iterator, Sequence

import apache_beam as beam

from t5pod.data import c4_cleaning


def parse(line: str, is_json: bool) -> Iterator[tuple[str, str]]:
    """(key, text) of one input line: a JSON object with `text` (and `url`), or a plain text page."""
    if not line.strip():
        return
    if not is_json:
        text, url = line, None
    else:
        try:
            record = json.loads(line)
            text, url = record["text"], record.get("url")
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(
                f"an input line is not a JSON object with a 'text' field ({error}): {line[:80]!r}"
            ) from None
    yield hashlib.md5((url or text).encode("utf-8")).hexdigest(), text


class _Cleaner:
    """A C4Cleaner per worker; the rules' counts go to Beam counters (namespace c4)."""

    def __init__(self, rules: c4_cleaning.CleaningRules):
        self.rules = rules
        self.cleaner = None

    def _counted(self, step, *args):
        if self.cleaner is None:
            self.cleaner = c4_cleaning.C4Cleaner(self.rules)
        before = dict(self.cleaner.counts)
        result = step(self.cleaner, *args)
        for name, value in self.cleaner.counts.items():
            if value != before[name]:
                beam.metrics.Metrics.counter("c4", name).inc(value - before[name])
        return result

    def clean_page(self, page: tuple[str, str]) -> Iterator[tuple[str, list[str]]]:
        key, text = page

        def step(cleaner, text):
            cleaner.counts["pages_in"] += 1
            return cleaner.clean_page(text)

        lines = self._counted(step, text)
        if lines is not None:
            yield key, lines

    def keep_owned(self, joined) -> Iterator[str]:
        """A page's lines that it owns (first time on the page), if enough remain."""
        key, groups = joined
        (lines,) = groups["lines"]
        owned = set(groups["owned"])

        def step(cleaner):
            kept, seen = [], set()
            for line in lines:
                digest = c4_cleaning.line_hash(line).hex()
                if digest not in owned or digest in seen:
                    cleaner.counts["lines_dropped_duplicate"] += 1
                    continue
                seen.add(digest)
                kept.append(line)
            return cleaner.enough_after_dedup(kept)

        kept = self._counted(step)
        if kept is not None:
            yield "\n".join(kept).strip()

    def keep(self, cleaned: str) -> Iterator[str]:
        if self._counted(lambda cleaner: cleaner.keep(cleaned)):
            yield cleaned


def build(root, input_pattern: str, output_prefix: str, rules: c4_cleaning.CleaningRules, is_json: bool):
    """Adds the cleaning to a Beam pipeline: reads input_pattern, writes output_prefix-*.jsonl."""
    cleaner = _Cleaner(rules)
    pages = (
        root
        | "read" >> beam.io.ReadFromText(input_pattern)
        | "parse" >> beam.FlatMap(parse, is_json)
        | "one_per_key" >> beam.CombinePerKey(min)
    )  # the same url (or text) twice: one page
    cleaned = pages | "clean_page" >> beam.FlatMap(cleaner.clean_page)
    if rules.dedup:
        owners = (
            cleaned
            | "line_keys"
            >> beam.FlatMap(lambda page: {(c4_cleaning.line_hash(line).hex(), page[0]) for line in page[1]})
            | "lowest_key" >> beam.CombinePerKey(min)
            | "by_owner" >> beam.Map(lambda line_and_key: (line_and_key[1], line_and_key[0]))
        )
        texts = (
            {"lines": cleaned, "owned": owners}
            | "join" >> beam.CoGroupByKey()
            | "dedup" >> beam.FlatMap(cleaner.keep_owned)
        )
    else:
        texts = cleaned | "join_lines" >> beam.Map(lambda page: "\n".join(page[1]).strip())
    return (
        texts
        | "language_and_bad_words" >> beam.FlatMap(cleaner.keep)
        | "to_json" >> beam.Map(lambda text: json.dumps({"text": text}, ensure_ascii=False))
        | "write" >> beam.io.WriteToText(output_prefix, file_name_suffix=".jsonl")
    )


def run(
    input_pattern: str,
    output_prefix: str,
    rules: c4_cleaning.CleaningRules,
    beam_args: Sequence[str] = (),
    is_json: bool = True,
) -> dict:
    """Runs the pipeline (DirectRunner unless beam_args name a runner); returns the rules' counts."""
    root = beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(list(beam_args)))
    build(root, input_pattern, output_prefix, rules, is_json)
    result = root.run()
    result.wait_until_finish()
    counters = result.metrics().query(beam.metrics.MetricsFilter().with_namespace("c4"))["counters"]
    counts = c4_cleaning.empty_counts()
    for counter in counters:
        counts[counter.key.metric.name] += counter.committed if counter.committed is not None else counter.attempted
    return counts
