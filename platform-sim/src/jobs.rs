//! The job factory: made-up but valid companies and people, and signed jobs of every kind.
//!
//! Companies get a Chinese name (e.g. 杭州明远科技有限公司), a unified social credit code with
//! a correct check character, an address and a landline of their city; people get a Chinese
//! name, an ID-card number with a real birth date and a correct check character, and a mobile
//! number `1[3-9]xxxxxxxxx`. All of it is invented at random: any resemblance to a registered
//! company or a real person is chance. Validity is the protocol crate's (`ukey_protocol::ident`).
//!
//! A [`JobDraft`] says what to ask for; [`build_job`] turns it into a [`JobDocument`] (fresh
//! job id and nonce, `issued_at` now, the SO PIN sealed to the station when the kind needs
//! it) and [`sign`] wraps it into the envelope the station verifies. Nothing here does IO.

use rand::RngExt;
use rand::seq::IndexedRandom;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use ukey_protocol::{
    CreditCode, DeliveryMethod, Enterprise, IdCardNumber, JobDocument, JobEnvelope, JobId, JobKind,
    JobSigningKey, KeyAlgorithm, KeyLabel, KeySpec, Landline, LegalRepresentative, Mobile, Nonce,
    SealRecipient, StationId, TokenSerial, V1, credit_code_with_check, id_card_with_check, seal,
    sign_job,
};

use super::error::PlatformError;

/// Cities with their administrative division code and landline area code.
const CITIES: &[(&str, &str, &str, &[&str])] = &[
    ("北京", "110108", "010", &["海淀区", "朝阳区", "东城区"]),
    ("上海", "310115", "021", &["浦东新区", "徐汇区", "静安区"]),
    ("杭州", "330106", "0571", &["西湖区", "滨江区", "余杭区"]),
    ("深圳", "440305", "0755", &["南山区", "福田区", "宝安区"]),
    ("广州", "440106", "020", &["天河区", "越秀区", "海珠区"]),
    ("成都", "510107", "028", &["武侯区", "锦江区", "高新区"]),
    ("南京", "320106", "025", &["鼓楼区", "玄武区", "建邺区"]),
    ("武汉", "420106", "027", &["武昌区", "江汉区", "洪山区"]),
    ("西安", "610113", "029", &["雁塔区", "碑林区", "未央区"]),
    ("苏州", "320505", "0512", &["虎丘区", "姑苏区", "吴中区"]),
];
const TRADE_NAMES: &[&str] = &[
    "示例", "明远", "华创", "恒信", "启航", "博雅", "新锐", "瑞丰", "天成", "嘉禾", "卓越", "同舟",
];
const INDUSTRIES: &[&str] = &[
    "科技",
    "电子",
    "建设",
    "贸易",
    "信息技术",
    "环保",
    "医疗器械",
    "物流",
    "软件",
    "工程",
];
const STREETS: &[&str] = &[
    "文一路",
    "科技园路",
    "学院路",
    "人民路",
    "建设大道",
    "创新大道",
];
const SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴", "徐", "孙", "马", "朱", "胡",
];
const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "强", "磊", "洋", "艳", "勇", "军", "杰", "涛", "明", "超",
    "秀英", "建国", "海燕", "志强", "晓东",
];

/// The 31 characters of a credit code.
const CREDIT_ALPHABET: &[u8] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";

fn pick<'a, T: ?Sized>(items: &'a [&'a T]) -> &'a T {
    // The lists above are non-empty constants; an empty one would be a programming error,
    // and the first element is as good as any.
    items.choose(&mut rand::rng()).copied().unwrap_or(items[0])
}

fn digits(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

/// A made-up person: a name, an ID-card number, a mobile number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// Chinese name, e.g. 张伟.
    pub name: String,
    /// A valid ID-card number (random birth date 1960-1999).
    pub id_number: IdCardNumber,
    /// A valid mobile number.
    pub mobile: Mobile,
}

impl Person {
    /// A random person registered in the division `division` (6 digits).
    pub fn random(division: &str) -> Result<Person, PlatformError> {
        let mut rng = rand::rng();
        let name = format!("{}{}", pick(SURNAMES), pick(GIVEN));
        // Day 1-28 exists in every month.
        let birth = format!(
            "{:04}{:02}{:02}",
            rng.random_range(1960..2000u32),
            rng.random_range(1..=12u32),
            rng.random_range(1..=28u32)
        );
        let id = id_card_with_check(&format!("{division}{birth}{}", digits(3)))
            .and_then(IdCardNumber::new)
            .map_err(|e| PlatformError::protocol("made-up ID-card number", e))?;
        let mobile = format!("1{}{}", rng.random_range(3..=9u8), digits(9));
        let mobile =
            Mobile::new(mobile).map_err(|e| PlatformError::protocol("made-up mobile", e))?;
        Ok(Person {
            name,
            id_number: id,
            mobile,
        })
    }
}

/// A made-up order: the company, its legal representative, the person handling it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The platform's order number.
    pub order_number: String,
    /// The administrative division the order belongs to.
    pub region: String,
    /// The company, as the job names it (name and credit code: what its certificates say).
    pub enterprise: Enterprise,
    /// The company's registered address (the platform's; never sent to a station).
    pub address: String,
    /// The company's landline (the platform's; never sent to a station).
    pub landline: Landline,
    /// Its legal representative (the `seal-legal` certificate's person; only the name is
    /// sent to a station).
    pub legal_representative: Person,
    /// The person handling the order (经办人).
    pub handler: Person,
}

impl Order {
    /// A random, valid order.
    pub fn random() -> Result<Order, PlatformError> {
        let mut rng = rand::rng();
        let (city, division, area, districts) = CITIES[rng.random_range(0..CITIES.len())];
        let name = format!("{city}{}{}有限公司", pick(TRADE_NAMES), pick(INDUSTRIES));
        // 9 = enterprise, 1 = company; then the division; then a 9-character organization
        // code; then the check character.
        let org: String = (0..9)
            .map(|_| char::from(CREDIT_ALPHABET[rng.random_range(0..CREDIT_ALPHABET.len())]))
            .collect();
        let credit_code = credit_code_with_check(&format!("91{division}{org}"))
            .and_then(CreditCode::new)
            .map_err(|e| PlatformError::protocol("made-up credit code", e))?;
        let address = format!(
            "{city}市{}{}{}号",
            pick(districts),
            pick(STREETS),
            rng.random_range(1..=999u32)
        );
        let landline = Landline::new(format!("{area}-{}", digits(8)))
            .map_err(|e| PlatformError::protocol("made-up landline", e))?;
        let date = OffsetDateTime::now_utc().date();
        Ok(Order {
            order_number: format!(
                "ORD-{:04}{:02}{:02}-{}",
                date.year(),
                u8::from(date.month()),
                date.day(),
                digits(6)
            ),
            region: division.to_owned(),
            enterprise: Enterprise { name, credit_code },
            address,
            landline,
            legal_representative: Person::random(division)?,
            handler: Person::random(division)?,
        })
    }

    /// The same company with another name (a `change` job's new subject).
    pub fn renamed(&self) -> Result<Order, PlatformError> {
        let mut other = Order::random()?;
        other.enterprise.credit_code = self.enterprise.credit_code.clone();
        other.region = self.region.clone();
        other.legal_representative = self.legal_representative.clone();
        Ok(other)
    }
}

/// What job to make. Build with [`JobDraft::new`] and the `with_…` methods.
#[derive(Debug, Clone)]
pub struct JobDraft {
    /// The kind.
    pub kind: JobKind,
    /// The station it is for.
    pub station_id: StationId,
    /// The order data (company, people).
    pub order: Order,
    /// The algorithm of all three key pairs.
    pub algorithm: KeyAlgorithm,
    /// Certificate validity in days.
    pub validity_days: u32,
    /// How long the job stays valid after it is issued.
    pub lifetime: time::Duration,
    /// The token a `renew`, `change` or `unlock` job names.
    pub target_token_serial: Option<TokenSerial>,
    /// The lost token a `replace` job names.
    pub old_token_serial: Option<TokenSerial>,
    /// `change` with new keys.
    pub rekey: bool,
    /// How the token reaches the customer.
    pub delivery: DeliveryMethod,
    /// A fixed job id instead of a fresh one.
    pub job_id: Option<JobId>,
}

impl JobDraft {
    /// A draft of `kind` for `station` with a random order, P-256 keys, one year of
    /// validity, one hour to live, pickup at the counter.
    pub fn new(kind: JobKind, station: &StationId) -> Result<JobDraft, PlatformError> {
        Ok(JobDraft {
            kind,
            station_id: station.clone(),
            order: Order::random()?,
            algorithm: KeyAlgorithm::P256,
            validity_days: 365,
            lifetime: time::Duration::hours(1),
            target_token_serial: None,
            old_token_serial: None,
            rekey: false,
            delivery: DeliveryMethod::Pickup,
            job_id: None,
        })
    }

    /// With the key algorithm of all three key pairs.
    pub fn with_algorithm(mut self, algorithm: KeyAlgorithm) -> JobDraft {
        self.algorithm = algorithm;
        self
    }

    /// With this order (e.g. the order of the job that made the token).
    pub fn with_order(mut self, order: Order) -> JobDraft {
        self.order = order;
        self
    }

    /// Naming the token to work on (`renew`, `change`, `unlock`).
    pub fn with_target(mut self, serial: TokenSerial) -> JobDraft {
        self.target_token_serial = Some(serial);
        self
    }

    /// Naming the lost token (`replace`).
    pub fn with_old_token(mut self, serial: TokenSerial) -> JobDraft {
        self.old_token_serial = Some(serial);
        self
    }

    /// `change` with new keys.
    pub fn with_rekey(mut self) -> JobDraft {
        self.rekey = true;
        self
    }

    /// With a certificate validity.
    pub fn with_validity_days(mut self, days: u32) -> JobDraft {
        self.validity_days = days;
        self
    }

    /// With a job lifetime.
    pub fn with_lifetime(mut self, lifetime: time::Duration) -> JobDraft {
        self.lifetime = lifetime;
        self
    }

    /// With a fixed job id.
    pub fn with_job_id(mut self, job_id: JobId) -> JobDraft {
        self.job_id = Some(job_id);
        self
    }

    /// Whether the kind carries a sealed SO PIN (`unlock`, `change` with rekey).
    pub fn needs_so_pin(&self) -> bool {
        self.kind == JobKind::Unlock || (self.kind == JobKind::Change && self.rekey)
    }
}

/// A fresh job id: `J-` and 16 hex digits.
pub fn new_job_id() -> Result<JobId, PlatformError> {
    let mut bytes = [0u8; 8];
    rand::rng().fill(&mut bytes);
    JobId::new(format!("J-{}", hex::encode(bytes)))
        .map_err(|e| PlatformError::protocol("job id", e))
}

/// A fresh nonce: 32 hex digits.
pub fn new_nonce() -> Result<Nonce, PlatformError> {
    let mut bytes = [0u8; 16];
    rand::rng().fill(&mut bytes);
    Nonce::new(hex::encode(bytes)).map_err(|e| PlatformError::protocol("nonce", e))
}

/// The job document of `draft`, issued `now`. `so_pin` is the token's SO PIN and the
/// station's key to seal it to; it is required exactly when [`JobDraft::needs_so_pin`].
pub fn build_job(
    draft: &JobDraft,
    now: OffsetDateTime,
    so_pin: Option<(&SealRecipient, &SecretString)>,
) -> Result<JobDocument, PlatformError> {
    let job_id = match &draft.job_id {
        Some(id) => id.clone(),
        None => new_job_id()?,
    };
    let mut job = JobDocument {
        v: V1,
        job_id,
        kind: draft.kind,
        station_id: draft.station_id.clone(),
        order_number: draft.order.order_number.clone(),
        region: draft.order.region.clone(),
        enterprise: draft.order.enterprise.clone(),
        // What goes into the certificates, nothing more: the people's ID-card numbers and
        // mobiles stay with the platform.
        legal_representative: LegalRepresentative {
            name: draft.order.legal_representative.name.clone(),
        },
        keys: KeyLabel::ALL
            .into_iter()
            .map(|label| KeySpec::new(label, draft.algorithm))
            .collect(),
        validity_days: draft.validity_days,
        target_token_serial: draft.target_token_serial.clone(),
        old_token_serial: draft.old_token_serial.clone(),
        rekey: draft.rekey,
        so_pin: None,
        delivery: draft.delivery,
        issued_at: now,
        expires_at: now + draft.lifetime,
        nonce: new_nonce()?,
    };
    if draft.needs_so_pin()
        && let Some((recipient, pin)) = so_pin
    {
        let sealed = seal(
            recipient,
            &job.so_pin_context(),
            pin.expose_secret().as_bytes(),
        )
        .map_err(|e| PlatformError::protocol("sealing the SO PIN", e))?;
        job.so_pin = Some(sealed);
    }
    ukey_protocol::codec::Message::validate(&job)
        .map_err(|e| PlatformError::protocol("made-up job", e))?;
    Ok(job)
}

/// Signs `job` with `key` under `key_id`.
pub fn sign(
    job: &JobDocument,
    key: &JobSigningKey,
    key_id: &str,
) -> Result<JobEnvelope, PlatformError> {
    sign_job(job, key, key_id).map_err(|e| PlatformError::protocol("signing a job", e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use ukey_protocol::codec::Message;

    #[test]
    fn made_up_orders_are_valid() {
        for _ in 0..200 {
            let order = Order::random().unwrap();
            order.enterprise.credit_code.check("credit_code").unwrap();
            order.legal_representative.id_number.check("id").unwrap();
            let m = order.handler.mobile.as_str().as_bytes();
            assert_eq!(m.len(), 11);
            assert!(order.enterprise.name.ends_with("有限公司"));
            let station = StationId::new("desk-01").unwrap();
            let draft = JobDraft::new(JobKind::New, &station)
                .unwrap()
                .with_order(order);
            let job = build_job(&draft, OffsetDateTime::now_utc(), None).unwrap();
            JobDocument::decode(&job.encode().unwrap()).unwrap();
        }
    }
}
