-- condition_timestamp (0002) with the same results, faster for the two forms
-- nearly every timestamp attribute has: UTC without a fraction
-- (2024-05-01T12:00:00Z) and a date alone. 0002's validating regex is almost all
-- of its cost, ~4 µs a call where the cast alone is ~0.4 µs, and a segment
-- refresh parses ~12,000 values; this path takes ~1 µs.
--
-- LIKE under "C" (case-sensitive, one character per `_`) fixes the length and
-- the separators. Each field is then one `= ANY` probe into a constant array of
-- its valid values, hashed by PostgreSQL 14+ (9 elements or more), which tests
-- both that the characters are ASCII digits and the range: the year in two
-- halves (10-99 and 00-99, so 1000-9999), 'MM-DD' among the 366 days of a leap
-- year, then 02-29 only in a leap year, by arithmetic on the validated year.
-- A text of those forms that fails is one the regex rejects too: NULL, without
-- the regex. Every other text takes 0002's body, unchanged.
--
-- The arrays are generated rather than written out (366 days); to the planner
-- they are constants of a function it still inlines (LANGUAGE sql, one
-- expression). CASE evaluates its arms in order, so no cast ever sees text the
-- probes have not validated.
DO $migration$
DECLARE
  two_digits CONSTANT TEXT[] := ARRAY(SELECT to_char(n, 'FM00') FROM generate_series(0, 99) AS n);
  leap_year_days CONSTANT TEXT[] := ARRAY(
    SELECT to_char(day, 'MM-DD')
    FROM generate_series(DATE '2000-01-01', DATE '2000-12-31', INTERVAL '1 day') AS day
  );
  valid_date CONSTANT TEXT := format(
    'substr(value, 1, 2) = ANY(%L::text[]) AND substr(value, 3, 2) = ANY(%L::text[])'
    ' AND substr(value, 6, 5) = ANY(%L::text[])',
    two_digits[11:100], two_digits, leap_year_days
  );
  valid_time CONSTANT TEXT := format(
    'substr(value, 12, 2) = ANY(%L::text[]) AND substr(value, 15, 2) = ANY(%L::text[])'
    ' AND substr(value, 18, 2) = ANY(%L::text[])',
    two_digits[1:24], two_digits[1:60], two_digits[1:60]
  );
  -- Only after valid_date: the casts need the year's digits.
  leap_day_in_leap_year CONSTANT TEXT := $leap$substr(value, 6, 5) <> '02-29'
      OR (substr(value, 1, 4)::int % 4 = 0
          AND (substr(value, 1, 4)::int % 100 <> 0 OR substr(value, 1, 4)::int % 400 = 0))$leap$;
  -- 0002's body, an argument of format() so that its `%` need no escaping.
  strict_parse CONSTANT TEXT := $strict$CASE
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
  END$strict$;
BEGIN
  -- An arm for each form, so that each uses `value` as few times as it can: the
  -- inlined function has the caller's argument (users.attributes #>> path) in
  -- place of each use, and each is one more JSON lookup.
  EXECUTE format(
    $function$
CREATE OR REPLACE FUNCTION condition_timestamp(value TEXT) RETURNS TIMESTAMPTZ
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN value COLLATE "C" LIKE '____-__-__T__:__:__Z' THEN CASE
      WHEN %1$s AND %2$s THEN CASE
        WHEN %3$s THEN value::timestamptz
      END
    END
    WHEN value COLLATE "C" LIKE '____-__-__' THEN CASE
      WHEN %1$s THEN CASE
        WHEN %3$s THEN (value || 'T00:00:00Z')::timestamptz
      END
    END
    ELSE %4$s
  END
$$
$function$,
    valid_date, valid_time, leap_day_in_leap_year, strict_parse
  );
END
$migration$;
