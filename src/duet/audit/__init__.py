"""The privacy audit: how much a trained model reveals about its training images
(``duet audit privacy RUN``). ``membership`` holds the attacks and their metrics
as pure functions over arrays; ``privacy`` is the stage that reads a run and
writes RUN/audit/."""
