"""The order the suite's tests are handed out in: the long ones first.

pytest-xdist's ``load`` scheduling (``-n``) hands each worker tests in collection order, a
chunk at a time, and the run ends when the last worker does. Collected by folder and name,
the longest tests came at the end (``tests/test_readme.py``'s clean install, 40-77 s, was
among the last 200 of 3,071): one worker ran it alone while the other had finished. Run
first, the long tests are spread over the workers while the rest fill in around them, and
the run ends on tests of a second or less.

Tests marked ``slow`` and those named below go first, in their collected order; the rest
keep theirs. A test renamed out of this list only runs where it is collected, as before.

Not listed, though as long: test_body_memory's small-pieces test. It counts the memory its
process allocates (tracemalloc) while a body is read, and threads an earlier test left
running count into it: run first, after the budget tests' gateways and alert threads, it
failed once ("21,433 bytes held for a body of 4,000"), where it passes after its neighbours.
"""

from __future__ import annotations

import pytest

LONG = frozenset(
    {
        # The longest calls of a full run (CI, two workers): 10 s or more each, as measured.
        "tests/test_readme.py::test_walkthrough_runs_as_written",
        "tests/integrity/test_cli_fuzz.py::test_whatever_a_user_types_the_answer_keeps_the_contract",
        "tests/integrity/test_cli_fuzz.py::test_a_bad_setting_is_one_line_naming_it",
        "tests/ledger/test_import_roundtrip.py::test_an_export_imported_into_a_fresh_ledger_answers_byte_for_byte_the_same",
        "tests/ledger/test_transfer.py::test_repricing_leaves_the_rollups_a_rebuild_from_raw_spans_gives",
        "tests/budgets/test_gate_model.py::test_no_sequence_of_calls_kills_and_midnights_spends_past_a_limit",
        "tests/ledger/test_rebuild_races.py::test_calls_at_midnights_month_ends_and_clock_changes_are_rebuilt_exactly",
        "tests/ledger/test_rebuild_races.py::test_a_rebuild_racing_any_command_ends_as_the_spans_say",
        "tests/ledger/test_rebuild_races.py::test_a_zone_change_leaves_no_cell_cut_at_the_old_zone",
        "tests/ledger/test_rebuild_races.py::test_a_call_written_while_a_stale_cell_at_the_cap_is_corrected_keeps_its_cost",
        "tests/ledger/test_rebuild_pieces.py::test_spans_written_during_a_rebuild_are_counted_once",
        "tests/ledger/test_rebuild_pieces.py::test_a_rebuild_killed_between_pieces_is_finished_by_the_next_open",
        "tests/ledger/test_zone_windows.py::test_any_window_in_any_zone_from_rollups_is_the_raw_report_perf_and_bill",
        "tests/ledger/test_attacks.py::test_a_ledger_opened_while_a_rebuild_runs_leaves_the_work_to_it",
        "tests/integrity/test_output_errors.py::test_out_to_its_own_stdout_in_a_pipe_is_written_into_it",
        "tests/integrity/test_setting_channels.py::test_any_text_for_any_setting_is_taken_or_said_in_ometers_words",
        "tests/reports/test_period_edges.py::test_each_span_is_in_the_one_period_its_local_clock_says",
        "tests/telemetry/test_collector_away.py::test_metrics_go_in_exports_a_grpc_collector_accepts",
        "tests/gateway/test_run_endings.py::test_a_call_still_streaming_when_the_program_exits_is_drained_and_recorded",
        "tests/integrity/test_slow_channels.py::test_a_hanging_webhook_does_not_hold_the_cli_and_its_attempt_is_on_record",
        "tests/integrity/test_slow_channels.py::test_alerts_still_going_out_at_exit_are_done_with_the_ledger_before_it_closes",
        "tests/ledger/test_rollups.py::test_histograms_of_any_window_from_rollups_are_the_raw_ones",
        "tests/budgets/test_gate.py::test_a_flood_of_tenant_names_under_an_each_tenant_budget_keeps_the_alert_watch_bounded",
        "tests/integrity/test_crash.py::test_kill_9_mid_stream_leaves_interrupted_spans",
        "tests/meter/test_openai_chat_bound.py::test_the_bound_holds_what_ollamas_openai_layer_hands_the_template",
        "tests/gateway/test_compat_bodies.py::test_a_hostile_body_is_answered_in_its_routes_shape_and_one_span",
        "tests/gateway/test_queue.py::test_backlogged_departments_get_their_weighted_share_and_a_newcomer_waits_one_round",
        "tests/upstream/test_resilience_trials.py::test_trials_with_a_moving_clock_and_calls_in_flight_match_the_reference",
        "tests/reports/test_extremes.py::test_the_costliest_longest_calls_add_up_exactly_in_every_format",
    }
)


def _long(item: pytest.Item) -> bool:
    return item.get_closest_marker("slow") is not None or item.nodeid.split("[")[0] in LONG


def long_first(items: list[pytest.Item]) -> None:
    """Put the long tests first, each group in the order it was collected (a stable sort:
    every worker sorts its collection the same way, as xdist requires)."""
    items.sort(key=lambda item: not _long(item))
