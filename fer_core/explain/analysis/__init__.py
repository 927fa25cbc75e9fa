"""What is done with attribution maps: facial regions (:mod:`.regions`), sanity checks
(:mod:`.sanity`) and their stored verdicts (:mod:`.quality`), overlays and class means
(:mod:`.overlay`)."""
