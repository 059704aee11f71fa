"""The scenario format: a patient (chart, hook, draft orders, selections) and the exact
recommendation codes it must get. Read by `mm-cds test`/`explain`, the try-it page and
the test suite (YAML files; `_library.yaml` holds shared resources).

Public API:
    Scenario, Verdict, load_file, load_all, load_library, scenario_files, find, check,
    card_code, card_codes, member_detail, member_suggestions, site_dirs_for, folder_site_dirs, read_yaml, shift_dates, DEFAULT_FOLDER,
    RECOMMENDATIONS_KEY (the card extension key listing the codes a card reports)
"""

from cds_service.scenarios._format import (
    DEFAULT_FOLDER,
    RECOMMENDATIONS_KEY,
    Scenario,
    Verdict,
    card_code,
    card_codes,
    check,
    find,
    folder_site_dirs,
    load_all,
    load_file,
    load_library,
    member_detail,
    member_suggestions,
    patient_id,
    read_yaml,
    scenario_files,
    shift_dates,
    site_dirs_for,
)

__all__ = [
    "DEFAULT_FOLDER", "RECOMMENDATIONS_KEY", "Scenario", "Verdict", "card_code", "card_codes", "check", "find", "folder_site_dirs", "load_all",
    "load_file", "load_library", "member_detail", "member_suggestions", "patient_id", "read_yaml", "scenario_files", "shift_dates", "site_dirs_for",
]
