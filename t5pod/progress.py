"""Progress lines for long commands: count done, rate and ETA, like training's step lines."""

import sys
import time


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """Prints `<what> done[/total]  rate <what>/s  ETA` every `every_s` seconds and at the end.

    total None: no ETA (a stream of unknown length). enabled False: silent (processes other than 0).
    stream: where the lines go (default stdout; stderr where stdout carries data).
    """

    def __init__(
        self,
        total: int | None,
        done: int = 0,
        enabled: bool = True,
        every_s: float = 30.0,
        what: str = "rows",
        prefix: str = "",
        stream=None,
    ):
        self.total, self.rows, self.enabled, self.every_s = total, done, enabled, every_s
        self.what, self.prefix, self.stream = what, prefix, stream
        self.start_rows, self.start = done, time.time()
        self.last = self.start

    def update(self, rows: int = 1):
        self.rows += rows
        now = time.time()
        if self.enabled and now - self.last >= self.every_s:
            self.last = now
            print(self.line(now), file=self.stream or sys.stdout, flush=True)

    def line(self, now: float) -> str:
        rate = (self.rows - self.start_rows) / max(now - self.start, 1e-9)
        total = f"/{self.total}" if self.total else ""
        eta = f"  ETA {format_duration((self.total - self.rows) / max(rate, 1e-9))}" if self.total else ""
        return f"{self.prefix}{self.what} {self.rows}{total}  {rate:.1f} {self.what}/s{eta}"

    def done(self, message: str = ""):
        if self.enabled:
            print(
                self.line(time.time()) + (f"\n{message}" if message else ""), file=self.stream or sys.stdout, flush=True
            )
