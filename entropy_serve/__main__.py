import sys

from entropy_serve.cli import main

if __name__ == "__main__":
    sys.exit(main())
