from petq.cli import run

if __name__ == "__main__":  # also keeps spawned worker processes from re-running the CLI
    run()
