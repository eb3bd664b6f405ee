from distillab.report import main

main()
