"""Feedback on a logged answer (rating, correction, comment), kept for fine-tuning."""

from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import KeyDep, ServiceDep
from api.routes import ERRORS
from api.schemas import FeedbackCreate, FeedbackPublic

router = APIRouter(prefix="/v1/answers", tags=["feedback"], responses=ERRORS)


@router.post(
    "/{answer_id}/feedback",
    response_model=FeedbackPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Rate an answer up or down, optionally with the correct answer",
)
def add_feedback(answer_id: str, body: FeedbackCreate, service: ServiceDep, key: KeyDep) -> FeedbackPublic:
    return service.add_feedback(key, answer_id, body.rating, body.correction, body.comment)
