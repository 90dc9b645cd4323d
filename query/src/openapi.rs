//! The OpenAPI 3.1 document of every route, served at `/openapi.json`.
//! A test checks it lists exactly the router's routes.

/// The document.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// Every `(method, path)` the router serves, for the test below and clients.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("post", "/v1/collections"),
    ("get", "/v1/collections"),
    ("delete", "/v1/collections/{name}"),
    ("post", "/v1/collections/{name}/chunks"),
    ("get", "/v1/collections/{name}/documents"),
    ("delete", "/v1/collections/{name}/documents/{doc}"),
    ("get", "/v1/collections/{name}/documents/{doc}/chunks"),
    ("get", "/v1/collections/{name}/versions"),
    ("post", "/v1/collections/{name}/versions"),
    ("post", "/v1/collections/{name}/versions/{version}/reembed"),
    ("post", "/v1/collections/{name}/switch"),
    ("post", "/v1/collections/{name}/search"),
    ("post", "/v1/collections/{name}/answer"),
    ("post", "/v1/embed"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_parses_and_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        let mut listed: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                listed.push((method.clone(), path.clone()));
            }
        }
        let mut expected: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        listed.sort();
        expected.sort();
        assert_eq!(listed, expected);
    }
}
