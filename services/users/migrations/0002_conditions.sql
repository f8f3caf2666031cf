-- What the condition language (conditions, docs/conditions.md) needs to
-- run as SQL over users.attributes.

-- A timestamp of the condition language: the text of a JSON string in the one
-- accepted form (conditions/values.py, TIMESTAMP_PATTERN, the same
-- pattern), as a timestamptz; NULL for anything else, impossible days
-- (2023-02-29) included, so that a condition never fails on a bad value. A date
-- alone is midnight UTC. The text of a JSON number, boolean, array or object
-- never has this form. CASE evaluates its arms in order, so the cast only ever
-- sees valid text; the day check is integer arithmetic (days in month m:
-- 30 + (m + m / 8) % 2, February 28 or 29).
CREATE FUNCTION condition_timestamp(value TEXT) RETURNS TIMESTAMPTZ
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN NOT value ~ '^[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])(T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+-](0[0-9]|1[0-4]):[0-5][0-9]))?$'
      THEN NULL
    WHEN substr(value, 9, 2)::int > CASE substr(value, 6, 2)::int
        WHEN 2 THEN CASE
          WHEN substr(value, 1, 4)::int % 4 = 0
           AND (substr(value, 1, 4)::int % 100 <> 0 OR substr(value, 1, 4)::int % 400 = 0)
          THEN 29 ELSE 28 END
        ELSE 30 + (substr(value, 6, 2)::int + substr(value, 6, 2)::int / 8) % 2 END
      THEN NULL
    WHEN length(value) = 10 THEN (value || 'T00:00:00Z')::timestamptz
    ELSE value::timestamptz
  END
$$;
