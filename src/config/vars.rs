//! Reading typed values out of the environment's variables, each failure naming the variable
//! and what it expected.

use std::{collections::HashMap, net::IpAddr, str::FromStr, time::Duration};

use ipnet::IpNet;

use super::ConfigError;
use crate::limits::Rate;

/// The variables settings are read from: the process environment, or a test's own map.
pub struct Vars<'a>(pub &'a HashMap<String, String>);

impl Vars<'_> {
    /// A variable's value, trimmed; unset and empty are the same.
    pub fn get(&self, name: &str) -> Option<String> {
        self.0
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// A value parsed with `FromStr`, or `default` when unset.
    pub fn parse_or<T: FromStr>(
        &self,
        name: &'static str,
        default: T,
        expected: &'static str,
    ) -> Result<T, ConfigError> {
        match self.get(name) {
            Some(value) => value
                .parse()
                .map_err(|_| ConfigError::invalid(name, &value, expected)),
            None => Ok(default),
        }
    }

    /// A whole number, or `default` when unset.
    pub fn number<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError> {
        self.parse_or(name, default, "a number")
    }

    /// A duration given in whole seconds, which must be positive.
    pub fn secs(&self, name: &'static str, default_secs: u64) -> Result<Duration, ConfigError> {
        match self.get(name) {
            None => Ok(Duration::from_secs(default_secs)),
            Some(value) => match value.parse::<i64>() {
                Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs.unsigned_abs())),
                _ => Err(ConfigError::invalid(
                    name,
                    &value,
                    "a positive number of seconds",
                )),
            },
        }
    }

    /// A duration in whole seconds where 0 is allowed (it turns something off).
    pub fn secs_or_zero(
        &self,
        name: &'static str,
        default_secs: u64,
    ) -> Result<Duration, ConfigError> {
        self.parse_or(name, default_secs, "a number of seconds (0 or more)")
            .map(Duration::from_secs)
    }

    /// `N/SECONDS`.
    pub fn rate(&self, name: &'static str, default: Rate) -> Result<Rate, ConfigError> {
        match self.get(name) {
            Some(value) => value
                .parse()
                .map_err(|_| ConfigError::invalid(name, &value, "N/SECONDS, e.g. 5/60")),
            None => Ok(default),
        }
    }

    /// `true`/`false` (also 1/0, yes/no, on/off).
    pub fn flag(&self, name: &'static str) -> Result<Option<bool>, ConfigError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        match value.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Some(true)),
            "0" | "false" | "no" | "off" => Ok(Some(false)),
            _ => Err(ConfigError::invalid(name, &value, "true or false")),
        }
    }

    /// A comma-separated list, empty items dropped.
    pub fn list(&self, name: &str) -> Option<Vec<String>> {
        self.get(name).map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect()
        })
    }

    /// IPs and CIDR ranges.
    pub fn nets(&self, name: &'static str) -> Result<Vec<IpNet>, ConfigError> {
        self.list(name)
            .unwrap_or_default()
            .iter()
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        ConfigError::invalid(
                            name,
                            item,
                            "comma-separated IP addresses or CIDR ranges",
                        )
                    })
            })
            .collect()
    }
}
