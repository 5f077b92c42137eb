"""`cryossl` command line (wired in cli.py by the lead; placeholder during bring-up)."""


def main(argv=None) -> int:
    raise SystemExit("cryossl CLI not wired yet")
