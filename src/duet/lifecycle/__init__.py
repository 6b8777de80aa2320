"""The model lifecycle after the first training: the registry of versions and its champion
(``registry``), the champion/challenger gate (``gate``), retraining on merged data
(``retrain``) and the watch loop that triggers it.
"""
