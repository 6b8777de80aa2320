"""`python -m duet` runs the same CLI as the `duet` console script."""

from duet.cli.app import main

if __name__ == "__main__":
    main()
