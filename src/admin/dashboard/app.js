// scopegate dashboard
