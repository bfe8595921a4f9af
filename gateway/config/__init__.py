"""Configuration: YAML in, frozen records out, every error reported with its line."""

from gateway.config.model import Config
from gateway.config.parse import load_config, parse_document, parse_flag
from gateway.config.reader import ConfigError, ConfigIssue

__all__ = ["Config", "ConfigError", "ConfigIssue", "load_config", "parse_document", "parse_flag"]
