"""The paper's user study (Sect. 4.4, Table 6) as a web survey: build the questions from two checkpoints,
serve them one per page, store the votes in SQLite inside the study folder, and tally them."""

from cbam.survey.store import VoteStore
from cbam.survey.study import Question, Study, StudyError, build_study, load_study
from cbam.survey.tally import Tally, tally_votes

__all__ = ["Question", "Study", "StudyError", "Tally", "VoteStore", "build_study", "load_study", "tally_votes"]
