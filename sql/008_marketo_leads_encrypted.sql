-- Field-level encryption (transforms/field_crypto.py, config/pii_policy.json): a lead's email, name and phone
-- are stored as AES-256-GCM tokens (`enc:v1:<kid>:<base64url>[@domain]`), longer than the clear values the
-- VARCHAR limits were sized for (a 254-character address becomes ~400 characters; a cut token cannot be
-- decrypted). varchar(n) -> text changes only the catalog (no table rewrite), and the phone column is new
-- (nullable): sales need the number back for follow-up. Idempotent (text -> text is a no-op).
ALTER TABLE marketo_leads ALTER COLUMN email TYPE TEXT;
ALTER TABLE marketo_leads ALTER COLUMN full_name TYPE TEXT;
ALTER TABLE marketo_leads ADD COLUMN IF NOT EXISTS phone TEXT;
COMMENT ON COLUMN marketo_leads.email IS 'field_crypto token (encrypt_email: domain readable); decrypt: python -m transforms.field_crypto decrypt --jsonl --table marketo_leads';
COMMENT ON COLUMN marketo_leads.full_name IS 'first and last name, each a field_crypto token';
COMMENT ON COLUMN marketo_leads.phone IS 'field_crypto token';
