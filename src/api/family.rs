//! Which of Tencent's two tag APIs an app uses (CONTRACT §8): the classic
//! all-member push (`v4/all_member_push/…`) or the Push plugin
//! (`v4/timpush/…`). Each family has a path to remove some tags and one to
//! remove every tag; the Push plugin can also answer per user.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiFamily {
    /// `v4/all_member_push/im_remove_tag` and `im_remove_all_tags`.
    #[default]
    #[value(name = "all_member_push")]
    AllMemberPush,
    /// `v4/timpush/remove_tag` and `clear_all_tags`.
    #[value(name = "timpush")]
    Timpush,
}

impl ApiFamily {
    /// The path that removes the listed tags of each user.
    pub fn remove_tag_path(self) -> &'static str {
        match self {
            ApiFamily::AllMemberPush => "/v4/all_member_push/im_remove_tag",
            ApiFamily::Timpush => "/v4/timpush/remove_tag",
        }
    }

    /// The path that removes every tag of each user.
    pub fn remove_all_path(self) -> &'static str {
        match self {
            ApiFamily::AllMemberPush => "/v4/all_member_push/im_remove_all_tags",
            ApiFamily::Timpush => "/v4/timpush/clear_all_tags",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ApiFamily::AllMemberPush => "all_member_push",
            ApiFamily::Timpush => "timpush",
        }
    }
}

impl fmt::Display for ApiFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ApiFamily {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "all_member_push" => Ok(ApiFamily::AllMemberPush),
            "timpush" => Ok(ApiFamily::Timpush),
            other => Err(format!("unknown API family {other:?}: use all_member_push or timpush")),
        }
    }
}
