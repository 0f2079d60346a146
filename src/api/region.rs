//! The regions of CONTRACT §6: each SDKAppID lives in one, and calling
//! another region's domain fails (70016, 70020). Each has a backup domain
//! for DNS trouble.

/// The regions of CONTRACT §6 and their domains (primary, backup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    China,
    Singapore,
    Seoul,
    Tokyo,
    Frankfurt,
    SiliconValley,
    Jakarta,
}

impl Region {
    pub const ALL: [Region; 7] = [
        Region::China,
        Region::Singapore,
        Region::Seoul,
        Region::Tokyo,
        Region::Frankfurt,
        Region::SiliconValley,
        Region::Jakarta,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Region::China => "china",
            Region::Singapore => "singapore",
            Region::Seoul => "seoul",
            Region::Tokyo => "tokyo",
            Region::Frankfurt => "frankfurt",
            Region::SiliconValley => "silicon-valley",
            Region::Jakarta => "jakarta",
        }
    }

    pub fn domain(self) -> &'static str {
        match self {
            Region::China => "console.tim.qq.com",
            Region::Singapore => "adminapisgp.im.qcloud.com",
            Region::Seoul => "adminapikr.im.qcloud.com",
            Region::Tokyo => "adminapijpn.im.qcloud.com",
            Region::Frankfurt => "adminapiger.im.qcloud.com",
            Region::SiliconValley => "adminapiusa.im.qcloud.com",
            Region::Jakarta => "adminapiidn.im.qcloud.com",
        }
    }

    /// The domain Tencent publishes for DNS trouble with the primary.
    pub fn backup_domain(self) -> &'static str {
        match self {
            Region::China => "adminapi.my-imcloud.com",
            Region::Singapore => "adminapisgp.my-imcloud.com",
            Region::Seoul => "adminapikr.my-imcloud.com",
            Region::Tokyo => "adminapijpn.my-imcloud.com",
            Region::Frankfurt => "adminapiger.my-imcloud.com",
            Region::SiliconValley => "adminapiusa.my-imcloud.com",
            Region::Jakarta => "adminapiidn.my-imcloud.com",
        }
    }

    pub fn base_url(self) -> String {
        format!("https://{}", self.domain())
    }
}

impl std::str::FromStr for Region {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Region::ALL.into_iter().find(|r| r.name().eq_ignore_ascii_case(s.trim())).ok_or_else(|| {
            let names: Vec<&str> = Region::ALL.iter().map(|r| r.name()).collect();
            format!("unknown region {s:?}; use one of {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions() {
        assert_eq!("silicon-valley".parse::<Region>(), Ok(Region::SiliconValley));
        assert_eq!(Region::China.base_url(), "https://console.tim.qq.com");
        assert!("mars".parse::<Region>().unwrap_err().contains("china, singapore"));
    }
}
