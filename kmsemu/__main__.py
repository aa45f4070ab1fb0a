from kmsemu.cli import main

main()
