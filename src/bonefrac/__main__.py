from bonefrac.apps.cli import run

run()
