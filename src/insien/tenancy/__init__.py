"""Who may call and within which limits: API keys and tokens (`auth`), the tenants file and
plans (`tenants`), create rates and connection counts (`quotas`), sandbox resources
(`resources`)."""
