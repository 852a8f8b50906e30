"""`python -m c360.cli`: the `c360` command."""

from c360.cli.main import app

app(prog_name="c360")
