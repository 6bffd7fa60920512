-- SKUs are taken as shops write them: letters of either case, digits, '-', '_' and '.'
-- (actors::domain::Sku). The constraint is the last line of defence behind the parser.
ALTER TABLE products DROP CONSTRAINT products_sku_check;
ALTER TABLE products ADD CONSTRAINT products_sku_check CHECK (sku ~ '^[A-Za-z0-9._-]{1,64}$');
