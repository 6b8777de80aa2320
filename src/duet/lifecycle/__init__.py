"""The model lifecycle after the first training: the champion/challenger gate (``gate``),
new labelled data merged without moving any old file across splits (``merge``), a
challenger trained and judged behind the gate (``retrain``) and the loop that
triggers it (``watch``). The versions and the champion pointer they promote are
``duet.artifacts.registry`` (the server reads them too).
"""
