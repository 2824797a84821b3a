"""The device's path parameters (report=, trace=, file=, error-trigger=) checked before
anything is created or moved: by the plugin in config_complete and by `nbdfork serve`."""

from __future__ import annotations

from nbdfork.config import DeviceConfig
from nbdfork.device.trace import is_trace_file
from nbdfork.errors import ConfigError
from nbdfork.files import check_media_file, check_new_file, check_report_dir

__all__ = ["validate_paths"]


def validate_paths(config: DeviceConfig) -> None:
    """Check every path parameter without creating anything; the first problem raises."""
    if config.report is not None:
        check_report_dir(config.report)
    if config.trace is not None:
        check_new_file("trace", config.trace, is_trace_file)
    if config.file is not None:
        check_media_file(config.file)
    trigger = config.faults.trigger
    if trigger is not None and not trigger.parent.is_dir():
        raise ConfigError("error-trigger", f"directory {trigger.parent} does not exist")
