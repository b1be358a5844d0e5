"""`python -m edgeprune`, which is also how `torchrun -m edgeprune export ...` starts each rank."""
from edgeprune.cli import main

if __name__ == "__main__":
    main()
