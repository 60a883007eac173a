//! `GET /profiles`: the profile listing a backfill pages through (omneo.md §Profiles).
//!
//! - Paging by offset: `page[size]` (1 to 100, 15 by default; above 100 → 422) and
//!   `page[number]` (from 1), answered with Laravel's `links{first,last,prev,next}` and
//!   `meta{current_page,from,last_page,path,per_page,to,total}`.
//! - `sort`: `created_at`, `updated_at`, `-created_at` or `-updated_at` (anything else → 422 on
//!   `sort`). Ties (many profiles share one `YYYY-MM-DD HH:MM:SS` second) keep creation order in
//!   either direction, so offset paging over an unchanged set is stable. Without `sort`: creation
//!   order.
//! - Filters, combined with AND: `filter[email]` (equal, ignoring case), and
//!   `filter[created_at][op]` / `filter[updated_at][op]` with op ∈ `eq|ne|gt|gte|lt|lte|in`
//!   (`in` takes a comma-separated list; a bare `filter[updated_at]` means `eq`). Values are
//!   `YYYY-MM-DD HH:MM:SS` (UTC), ISO 8601 (`2026-11-30T10:00:00Z`) or `YYYY-MM-DD`; an unknown
//!   operator or an unreadable value → 422 naming the filter.
//!
//! Every write that changes a profile bumps its `updated_at` (profile, comms and identity writes
//! alike), so a run that writes back while paging sorted by `updated_at` skips or repeats
//! profiles.

use std::cmp::Ordering;
use std::collections::HashMap;

use axum::extract::{OriginalUri, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;

use super::profiles::Profile;
use super::responses::{ApiError, PageRequest, Validator, parse_datetime};
use super::state::{Caller, Shared};

/// A date-time field profiles are sorted and filtered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DateField {
    CreatedAt,
    UpdatedAt,
}

impl DateField {
    const ALL: [Self; 2] = [Self::CreatedAt, Self::UpdatedAt];

    fn name(self) -> &'static str {
        match self {
            Self::CreatedAt => "created_at",
            Self::UpdatedAt => "updated_at",
        }
    }

    /// The field of `profile`: `YYYY-MM-DD HH:MM:SS`, which orders like the time it names.
    fn of(self, profile: &Profile) -> &str {
        match self {
            Self::CreatedAt => &profile.created_at,
            Self::UpdatedAt => &profile.updated_at,
        }
    }
}

/// `sort`: a field, ascending or (`-field`) descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sort {
    field: DateField,
    descending: bool,
}

impl Sort {
    fn parse(text: &str) -> Option<Self> {
        let (descending, name) = match text.strip_prefix('-') {
            Some(name) => (true, name),
            None => (false, text),
        };
        let field = DateField::ALL.into_iter().find(|f| f.name() == name)?;
        Some(Self { field, descending })
    }

    fn compare(self, a: &Profile, b: &Profile) -> Ordering {
        let order = self.field.of(a).cmp(self.field.of(b));
        if self.descending {
            order.reverse()
        } else {
            order
        }
    }
}

/// The operator of a date filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
}

impl Operator {
    const ALL: [(&'static str, Self); 7] = [
        ("eq", Self::Eq),
        ("ne", Self::Ne),
        ("gt", Self::Gt),
        ("gte", Self::Gte),
        ("lt", Self::Lt),
        ("lte", Self::Lte),
        ("in", Self::In),
    ];

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == text).map(|(_, o)| *o)
    }

    /// Whether a field comparing `order` to a filter value passes.
    fn accepts(self, order: Ordering) -> bool {
        match self {
            Self::Eq | Self::In => order.is_eq(),
            Self::Ne => order.is_ne(),
            Self::Gt => order.is_gt(),
            Self::Gte => order.is_ge(),
            Self::Lt => order.is_lt(),
            Self::Lte => order.is_le(),
        }
    }
}

/// `filter[{field}][{operator}]`: its values, normalised to `YYYY-MM-DD HH:MM:SS` UTC (one,
/// except for `in`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct DateFilter {
    field: DateField,
    operator: Operator,
    values: Vec<String>,
}

impl DateFilter {
    /// Reads a query parameter; `None` when it is not a date filter, 422-style messages on
    /// `v` when it is a bad one.
    fn parse(key: &str, raw: &str, v: &mut Validator) -> Option<Self> {
        let (field, rest) = DateField::ALL.into_iter().find_map(|field| {
            let rest = key.strip_prefix(&format!("filter[{}]", field.name()))?;
            Some((field, rest))
        })?;
        let operator = if rest.is_empty() {
            Some(Operator::Eq)
        } else {
            rest.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(Operator::parse)
        };
        let Some(operator) = operator else {
            v.fail(
                key,
                format!("The {key} filter operator must be one of eq, ne, gt, gte, lt, lte, in."),
            );
            return None;
        };
        let values = if operator == Operator::In {
            raw.split(',').map(parse_datetime).collect()
        } else {
            parse_datetime(raw).map(|value| vec![value])
        };
        let Some(values) = values else {
            v.fail(key, format!("The {key} filter must be a valid date."));
            return None;
        };
        Some(Self {
            field,
            operator,
            values,
        })
    }

    fn matches(&self, profile: &Profile) -> bool {
        let at = self.field.of(profile);
        self.values
            .iter()
            .any(|value| self.operator.accepts(at.cmp(value.as_str())))
    }
}

/// What a `GET /profiles` selects: its filters and its order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listing {
    email: Option<String>,
    dates: Vec<DateFilter>,
    sort: Option<Sort>,
}

impl Listing {
    /// Reads `filter[…]` and `sort` (422 naming each bad one).
    fn from_query(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let mut v = Validator::default();
        let dates = query
            .iter()
            .filter_map(|(key, raw)| DateFilter::parse(key, raw, &mut v))
            .collect();
        let sort = query.get("sort").and_then(|text| {
            let sort = Sort::parse(text);
            if sort.is_none() {
                v.fail(
                    "sort",
                    "The sort must be one of created_at, updated_at, -created_at, -updated_at.",
                );
            }
            sort
        });
        v.finish()?;
        Ok(Self {
            email: query.get("filter[email]").cloned(),
            dates,
            sort,
        })
    }

    fn matches(&self, profile: &Profile) -> bool {
        self.email.as_deref().is_none_or(|wanted| {
            profile
                .email
                .as_deref()
                .is_some_and(|e| e.eq_ignore_ascii_case(wanted))
        }) && self.dates.iter().all(|filter| filter.matches(profile))
    }

    /// The matching profiles of `profiles` (in creation order), in the requested order; the sort
    /// is stable, so ties keep creation order.
    fn select<'a>(&self, profiles: impl Iterator<Item = &'a Profile>) -> Vec<&'a Profile> {
        let mut selected: Vec<&Profile> = profiles.filter(|p| self.matches(p)).collect();
        if let Some(sort) = self.sort {
            selected.sort_by(|a, b| sort.compare(a, b));
        }
        selected
    }
}

/// `GET /profiles`: filtered, sorted and paged (see the module docs).
pub(crate) async fn list(
    caller: Caller,
    State(sim): State<Shared>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let page = PageRequest::from_query(&query)?;
    let listing = Listing::from_query(&query)?;
    sim.read(&caller.tenant, |t| {
        let profiles = listing.select(t.profiles.iter().map(|r| &r.profile));
        Ok(page.respond(profiles, &headers, uri.path(), &query))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(pairs: &[(&str, &str)]) -> Result<Listing, ApiError> {
        let query = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Listing::from_query(&query)
    }

    fn errors_on(error: ApiError) -> Vec<String> {
        match error {
            ApiError::Validation(errors) => errors.into_keys().collect(),
            other => panic!("expected a 422, got {other}"),
        }
    }

    #[test]
    fn date_filters_read_every_operator_and_both_formats() {
        let read = listing(&[
            ("filter[updated_at][gte]", "2026-11-30T10:00:00Z"),
            ("filter[created_at][in]", "2026-01-01 00:00:00,2026-01-02"),
            ("filter[created_at]", "2026-01-03 04:05:06"),
        ])
        .unwrap();
        let mut dates = read.dates.clone();
        dates.sort_by_key(|d| (d.field.name(), d.values.len()));
        assert_eq!(
            dates,
            [
                DateFilter {
                    field: DateField::CreatedAt,
                    operator: Operator::Eq,
                    values: vec!["2026-01-03 04:05:06".into()],
                },
                DateFilter {
                    field: DateField::CreatedAt,
                    operator: Operator::In,
                    values: vec!["2026-01-01 00:00:00".into(), "2026-01-02 00:00:00".into()],
                },
                DateFilter {
                    field: DateField::UpdatedAt,
                    operator: Operator::Gte,
                    values: vec!["2026-11-30 10:00:00".into()],
                },
            ]
        );
        for (name, operator) in Operator::ALL {
            let key = format!("filter[updated_at][{name}]");
            let read = listing(&[(&key, "2026-11-30 10:00:00")]).unwrap();
            assert_eq!(read.dates[0].operator, operator, "{key}");
        }
    }

    #[test]
    fn operators_compare_the_field_with_the_value() {
        use Ordering::{Equal, Greater, Less};
        let cases = [
            (Operator::Eq, [false, true, false]),
            (Operator::Ne, [true, false, true]),
            (Operator::Gt, [false, false, true]),
            (Operator::Gte, [false, true, true]),
            (Operator::Lt, [true, false, false]),
            (Operator::Lte, [true, true, false]),
            (Operator::In, [false, true, false]),
        ];
        for (operator, expected) in cases {
            assert_eq!(
                [Less, Equal, Greater].map(|o| operator.accepts(o)),
                expected,
                "{operator:?}"
            );
        }
    }

    /// A bare profile `id` stamped `created_at` and `updated_at`.
    fn profile(id: &str, created_at: &str, updated_at: &str) -> Profile {
        serde_json::from_value(serde_json::json!({
            "id": id, "profile_type": "active", "identities": [], "attributes": {"comms": {}},
            "custom_attributes": [], "tags": [], "reward_balance": 0.0, "point_balance": 0.0,
            "created_at": created_at, "updated_at": updated_at,
        }))
        .expect("a profile")
    }

    fn ids(selected: &[&Profile]) -> Vec<String> {
        selected.iter().map(|p| p.id.clone()).collect()
    }

    #[test]
    fn ties_keep_creation_order_both_ways_and_filters_combine() {
        let (early, late) = ("2026-01-01 00:00:00", "2026-01-01 00:00:01");
        let profiles = [
            profile("a", late, late),
            profile("b", early, late),
            profile("c", late, early),
            profile("d", early, early),
        ];
        let select = |pairs: &[(&str, &str)]| ids(&listing(pairs).unwrap().select(profiles.iter()));
        assert_eq!(select(&[]), ["a", "b", "c", "d"]);
        assert_eq!(select(&[("sort", "created_at")]), ["b", "d", "a", "c"]);
        assert_eq!(select(&[("sort", "-created_at")]), ["a", "c", "b", "d"]);
        assert_eq!(select(&[("sort", "-updated_at")]), ["a", "b", "c", "d"]);
        assert_eq!(
            select(&[
                ("filter[created_at][lt]", "2026-01-01T00:00:01Z"),
                ("filter[updated_at][gte]", late),
            ]),
            ["b"]
        );
    }

    #[test]
    fn bad_filters_and_sorts_are_422_naming_them() {
        let bad = [
            ("filter[updated_at][gte]", "yesterday"),
            ("filter[updated_at][after]", "2026-01-01"),
            ("filter[created_at][in]", "2026-01-01,soon"),
            ("sort", "email"),
        ];
        for (key, value) in bad {
            let error = listing(&[(key, value)]).unwrap_err();
            assert_eq!(errors_on(error), [key], "{key}={value}");
        }
        let error = listing(&bad).unwrap_err();
        assert_eq!(errors_on(error).len(), bad.len(), "every bad one is named");
    }

    #[test]
    fn sorts_read_both_directions() {
        for (text, field, descending) in [
            ("created_at", DateField::CreatedAt, false),
            ("-created_at", DateField::CreatedAt, true),
            ("updated_at", DateField::UpdatedAt, false),
            ("-updated_at", DateField::UpdatedAt, true),
        ] {
            assert_eq!(Sort::parse(text), Some(Sort { field, descending }));
        }
        assert_eq!(Sort::parse("--created_at"), None);
        assert_eq!(Sort::parse("id"), None);
    }
}
