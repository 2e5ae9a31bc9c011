"""The broker's YAML configuration: issuers, the identity inventory and introspection clients.

Validated with marshmallow at start-up. Every error names the key path and what is wrong,
and the broker refuses to start on a bad file (see docs/configuration.md).

    values.py      what one value may be (validators, field types)
    schema.py      the marshmallow schemas, one per section
    issuers.py     the `issuers:` section across its entries
    identities.py  the inventory: type rules, own keys, no two identities matching one token
    parse.py       parse_config(): a parsed document to a Config, or ConfigError
    loading.py     load_config(): the file, duplicate-key-free YAML, ${NAME} expansion"""

from broker.config.issuers import PLAIN_HTTP_WARNING
from broker.config.loading import expand_vars, load_config
from broker.config.parse import ConfigError, parse_config
from broker.config.schema import (
    AllowSchema,
    BrokerSchema,
    ClientSchema,
    ConfigSchema,
    IdentitySchema,
    IssuerSchema,
    KeysSchema,
    LimitsSchema,
    MatchSchema,
    TypeRulesSchema,
)
from broker.config.values import SAFE_ID_RULE, TRUSTED_URL_RULE, ClaimValue, DateField

__all__ = [
    "PLAIN_HTTP_WARNING",
    "SAFE_ID_RULE",
    "TRUSTED_URL_RULE",
    "AllowSchema",
    "BrokerSchema",
    "ClaimValue",
    "ClientSchema",
    "ConfigError",
    "ConfigSchema",
    "DateField",
    "IdentitySchema",
    "IssuerSchema",
    "KeysSchema",
    "LimitsSchema",
    "MatchSchema",
    "TypeRulesSchema",
    "expand_vars",
    "load_config",
    "parse_config",
]
