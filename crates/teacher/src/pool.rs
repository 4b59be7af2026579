//! The configured teacher endpoints.

use crate::client::TeacherClient;
use crate::error::TeacherError;
use rand::Rng;
use reasonrec_core::settings::TeacherSettings;

#[derive(Debug, Clone)]
pub struct TeacherPool {
    clients: Vec<TeacherClient>,
    total_weight: u64,
}

impl TeacherPool {
    pub fn new(settings: &TeacherSettings) -> Result<Self, TeacherError> {
        let clients = settings.endpoints.iter().map(TeacherClient::new).collect::<Result<Vec<_>, _>>()?;
        let total_weight = clients.iter().map(|c| u64::from(c.endpoint().weight)).sum();
        Ok(Self { clients, total_weight })
    }

    pub fn clients(&self) -> &[TeacherClient] {
        &self.clients
    }

    /// An endpoint chosen at random in proportion to its weight (weight 0 = never, unless all are 0).
    pub fn pick(&self) -> Option<&TeacherClient> {
        if self.total_weight == 0 {
            return self.clients.first();
        }
        let mut x = rand::rng().random_range(0..self.total_weight);
        for c in &self.clients {
            let w = u64::from(c.endpoint().weight);
            if x < w {
                return Some(c);
            }
            x -= w;
        }
        self.clients.last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reasonrec_core::settings::EndpointSettings;

    #[test]
    fn picks_by_weight() {
        let ep = |name: &str, weight| EndpointSettings { name: name.into(), weight, ..EndpointSettings::default() };
        let settings =
            TeacherSettings { endpoints: vec![ep("a", 3), ep("b", 1), ep("c", 0)], ..TeacherSettings::default() };
        let Ok(pool) = TeacherPool::new(&settings) else { panic!("pool") };
        let mut counts = std::collections::HashMap::new();
        for _ in 0..8000 {
            let name = pool.pick().map(|c| c.endpoint().name.clone()).unwrap_or_default();
            *counts.entry(name).or_insert(0u32) += 1;
        }
        let a = counts.get("a").copied().unwrap_or(0);
        let b = counts.get("b").copied().unwrap_or(0);
        assert_eq!(counts.get("c"), None);
        assert!((5600..=6400).contains(&a), "a={a} b={b}");
        assert_eq!(a + b, 8000);
    }
}
