"""Text data (issue #19): documents with a class each, and the vectorisation that turns them into ids.

``read`` reads a corpus (a folder of class folders of .txt files, or a table with
a text column and a target) and says what it skipped or decoded with
replacement; ``checks`` is what ``duet scan`` reports about it; ``spec`` is the
vectorisation (standardize, split, vocabulary, ids) fitted on the training texts,
which ``tf_spec`` reproduces with Keras ``TextVectorization``, id for id.
"""
