"""The job panel: progress of background jobs (petq.jobs), polled every second in a
fragment, outside the page's own script run; Cancel and Restart buttons."""

from __future__ import annotations

import streamlit as st

from petq.errors import PetqError
from petq.jobs import Job, Status, cancel_job, job_status, list_jobs, restart_job
from petq.types import JobKind

JOBS_KEY = "petq_jobs"  # ids of jobs this session started
PROGRESS_SEEN_KEY = "petq_jobs_progress_seen"  # job id -> (state, variants done) last shown
SHOWN = 5  # jobs shown at most, newest first
MARKS = {Status.DONE: ":material/check_circle:", Status.FAILED: ":material/error:",
         Status.RUNNING: ":material/hourglass_top:", Status.QUEUED: ":material/schedule:",
         Status.CANCELLED: ":material/cancel:"}


def remember_job(job_id: str) -> None:
    """Show this job in this session's panel until the user clears it."""
    st.session_state.setdefault(JOBS_KEY, [])
    if job_id not in st.session_state[JOBS_KEY]:
        st.session_state[JOBS_KEY].append(job_id)


def _jobs_to_show(cache: str) -> list[Job]:
    """Running jobs of any session, and this session's finished ones."""
    shown = {j.id: j for j in list_jobs(cache, active_only=True)}
    for job_id in st.session_state.get(JOBS_KEY, []):
        if job_id not in shown:
            job = job_status(cache, job_id)
            if job is not None:
                shown[job_id] = job
    return sorted(shown.values(), key=lambda j: j.created, reverse=True)


def _job_box(job: Job, key_prefix: str) -> None:
    with st.container(border=True):
        st.markdown(f"**Job {job.id}** · {job.title}")
        if job.kind is JobKind.VARIANTS:
            st.progress(job.fraction,
                        text=f"{job.done}/{job.total} variants done · {job.state.value}")
        elif job.state is Status.RUNNING:  # a tune or a curve: its stage is its progress
            st.progress(job.stage_fraction, text=f"{job.kind.value} · {job.stage_text}")
        else:
            st.caption(f"{job.kind.value} · {job.state.value}")
        if job.state is Status.RUNNING and job.kind is JobKind.VARIANTS:
            st.progress(job.stage_fraction, text=job.stage_text)
        elif job.state is Status.QUEUED and job.stage:
            st.caption(job.stage_text)  # "waiting for job X": one worker per cache
        if job.variants:
            st.caption("  ".join(f"{MARKS[v.status]} {v.name}"
                                 + (" (cached)" if v.cached else "") for v in job.variants))
        if job.state is Status.FAILED:
            st.error(job.error or "the job failed")
        if job.restartable and st.button(
            "Restart", key=f"{key_prefix}_restart_{job.id}"
        ):
            try:
                remember_job(restart_job(job.cache_root, job.id))
            except PetqError as exc:
                st.error(str(exc))
            else:
                st.rerun(scope="app")
        if job.active and st.button("Cancel", key=f"{key_prefix}_cancel_{job.id}"):
            cancel_job(job.cache_root, job.id)
            st.rerun(scope="app")


def _progress_marks(jobs: list[Job]) -> dict[str, tuple[Status, int]]:
    return {j.id: (j.state, j.done) for j in jobs}


def job_panel(ws, key_prefix: str) -> None:
    """Progress of running jobs, polled every second outside the page's own run.

    Whenever a variant or a job finishes, the whole page reruns so its tables
    and charts pick up the new results.
    """
    cache = str(ws.cache.root)
    jobs = _jobs_to_show(cache)
    active = any(j.active for j in jobs)
    st.session_state[PROGRESS_SEEN_KEY] = _progress_marks(jobs)

    @st.fragment(run_every=1.0 if active else None)
    def panel() -> None:
        current = _jobs_to_show(cache)
        marks = _progress_marks(current)
        seen = st.session_state.get(PROGRESS_SEEN_KEY, {})
        if any(seen.get(job_id, (None, 0)) != mark and (not mark[0].active or mark[1])
               for job_id, mark in marks.items()):
            st.session_state[PROGRESS_SEEN_KEY] = marks
            st.rerun(scope="app")
        for job in current[:SHOWN]:
            _job_box(job, key_prefix)
        finished_mine = [j for j in current if not j.active]
        if finished_mine and st.button("Clear finished jobs", key=f"{key_prefix}_clear_jobs"):
            done = {j.id for j in finished_mine}
            st.session_state[JOBS_KEY] = [
                i for i in st.session_state.get(JOBS_KEY, []) if i not in done
            ]
            st.rerun(scope="app")

    if jobs:
        st.subheader("Jobs")
        panel()
