"""Stand-in for the pip bootstrap script that ansible-test downloads from its own file host.

ansible-test creates empty virtual environments for some sanity tests and runs a
"get-pip" script in them.  This machine reaches only the package registries, so this
script installs pip with the interpreter's bundled ensurepip and then runs
``pip install`` with the arguments ansible-test passes (the package index comes from
the machine's own pip configuration).
"""
import subprocess
import sys

subprocess.check_call([sys.executable, '-m', 'ensurepip', '--default-pip'],
                      stdout=subprocess.DEVNULL)
from pip._internal.cli.main import main  # noqa: E402

# get-pip's own switches, not pip's: --no-setuptools / --no-wheel mean "do not add them".
args = [a for a in sys.argv[1:] if a not in ('--no-setuptools', '--no-wheel')]
sys.exit(main(['install'] + args))
