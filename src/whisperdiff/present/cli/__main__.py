from whisperdiff.present.cli import main

main()
