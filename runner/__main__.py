from runner.cli import main

if __name__ == "__main__":  # guarded: the MLflow writer process is spawned and re-imports __main__
    main()
